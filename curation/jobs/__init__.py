"""The job path: upload training files, run fine-tuning jobs, retrain nightly."""
