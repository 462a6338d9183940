from tests.fake_together import main

main()
