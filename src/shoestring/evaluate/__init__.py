"""Evaluation: task metrics with confidence intervals, paired comparison, fairness, explanations, reports."""
