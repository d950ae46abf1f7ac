"""Dataset sources: each module that defines a `DATASET` (a `harness.data.types.Dataset`) is a
registered dataset; adding one touches its own module only.
"""
