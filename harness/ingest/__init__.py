"""Ingest: image, caption, label-map and clip folders tokenized into shard folders (run_study.py
tokenize).
"""
