"""The review dashboard: FastAPI, server-rendered pages and a JSON API under ``/api``."""

from anomaly.dashboard.app import create_app

__all__ = ["create_app"]
