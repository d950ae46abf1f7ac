"""Running one trial: the checkpoint store, sampling to disk, evaluation, the ledger, and the plan of a
study.
"""
