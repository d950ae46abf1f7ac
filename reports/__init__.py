"""Comparison reports generated from the MLflow store and run folders."""

import harness.tracking  # noqa: F401 (MLflow's telemetry off before a report module imports MLflow)
