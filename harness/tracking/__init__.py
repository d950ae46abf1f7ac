"""The only code that talks to MLflow: one experiment per study, a parent run per invocation, a child
run per trial.
"""
