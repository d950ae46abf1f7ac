"""Evaluator (in progress)."""
from harness.evaluation import domain, inception  # noqa: F401  (register extractors)
