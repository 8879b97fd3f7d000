"""Evaluation: the classifier that judges class consistency, feature spaces, metrics, reports.

evaluate.py (facediff.jobs.evaluate) runs it on a checkpoint; facediff.lightning.eval_callback
runs a cheap part of it during training.
"""
