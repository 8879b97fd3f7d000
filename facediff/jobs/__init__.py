"""The bodies of the sample.py and evaluate.py entry points."""
