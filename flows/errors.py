"""The errors that are the user's to fix: reported in one line, never retried. Importing this
module imports no Prefect (commands that run no flow use it too)."""

from __future__ import annotations

from anomaly.config import ConfigError
from anomaly.io import DataError
from anomaly.registry import RegistryError

#: errors a retry cannot fix
USER_ERRORS = (ConfigError, DataError, RegistryError, FileNotFoundError, ValueError)
