"""Versioned detectors on local disk: ``<home>/models/<name>/v<N>/``.

The stand-in registry until models move to MLflow's: each training run writes a new version;
scoring takes the newest unless a version is named.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from anomaly.detector import Detector


def _versions(home: Path, name: str) -> list[int]:
    root = home / "models" / name
    if not root.is_dir():
        return []
    return sorted(int(m[1]) for p in root.iterdir() if (m := re.fullmatch(r"v(\d+)", p.name)))


def save_version(detector: Detector, home: Path, name: str) -> int:
    """Store ``detector`` as the next version of ``name``; returns the version number."""
    root = home / "models" / name
    root.mkdir(parents=True, exist_ok=True)
    while True:
        version = (_versions(home, name) or [0])[-1] + 1
        staging = root / f".v{version}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        detector.save(staging)
        try:
            staging.rename(root / f"v{version}")  # fails if another process took the number
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            continue
        return version


def load_version(home: Path, name: str, version: int | None = None) -> tuple[Detector, int]:
    """The detector of ``name`` at ``version`` (default: newest) and its version number."""
    versions = _versions(home, name)
    if not versions:
        msg = f"no trained model named {name!r} under {home}; run `anomaly train` first"
        raise FileNotFoundError(msg)
    version = versions[-1] if version is None else version
    if version not in versions:
        msg = f"model {name!r} has no version {version}; versions: {versions}"
        raise FileNotFoundError(msg)
    return Detector.load(home / "models" / name / f"v{version}"), version
