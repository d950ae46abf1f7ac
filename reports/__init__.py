"""Comparison reports generated from the MLflow store and run folders."""
