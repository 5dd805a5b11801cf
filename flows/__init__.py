"""Prefect flows: thin orchestration over :mod:`anomaly` (retries, artifacts, parallelism)."""
