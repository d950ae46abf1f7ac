"""Data: token datasets, their tokenizers and the registry of datasets. Imports nothing else of the
harness but the cache.
"""
