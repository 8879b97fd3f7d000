"""Evaluation: the classifier that judges class consistency, feature spaces, metrics, reports.

evaluate.py (facediff.evaluate_job) runs it on a checkpoint; facediff.evaluation.callback runs a
cheap part of it during training.
"""
