from tests.fake_openai import main

main()
