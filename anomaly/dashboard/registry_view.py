"""What the dashboard reads from the MLflow registry: detectors per version (cached) and the
champion/challenger overview. Every failure becomes a message, never a broken page."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anomaly.config import Config

if TYPE_CHECKING:
    from anomaly.detector import Detector

logger = logging.getLogger(__name__)


class Detectors:
    """Detectors by model version, loaded once through :func:`anomaly.registry.load_detector`.

    A failed load is remembered for ``retry_seconds`` so an unreachable registry slows down
    one request, not every page.
    """

    def __init__(self, config: Config, retry_seconds: float = 60.0) -> None:
        self.config = config
        self.retry_seconds = retry_seconds
        self._loaded: dict[str, Detector] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, version: str) -> tuple[Detector | None, str | None]:
        """(detector, None) or (None, why it is not available)."""
        with self._guard:
            lock = self._locks.setdefault(version, threading.Lock())
        with lock:
            if version in self._loaded:
                return self._loaded[version], None
            failed = self._failed.get(version)
            if failed and time.monotonic() - failed[0] < self.retry_seconds:
                return None, failed[1]
            try:
                from anomaly.registry import load_detector  # MLflow loads on first use

                detector, _ = load_detector(self.config, version)
            except Exception as exc:
                reason = f"model version {version} could not be loaded from the registry: {exc}"
                logger.warning(reason)
                self._failed[version] = (time.monotonic(), reason)
                return None, reason
            self._loaded[version] = detector
            self._failed.pop(version, None)
            return detector, None


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: its aliases, MLflow run and metrics."""

    version: str
    aliases: list[str]
    run_id: str | None
    created: str
    metrics: dict[str, float] = field(default_factory=dict)
    #: kind ``auto``: the kind it chose (else None) and each candidate's held-out
    #: log-likelihood (from the run's ``auto.chosen`` tag and ``auto.*`` metrics)
    auto_chosen: str | None = None
    auto_candidates: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelOverview:
    """The registry as the model page shows it (``error`` set when MLflow could not answer)."""

    name: str
    tracking_uri: str
    versions: list[VersionInfo] = field(default_factory=list)
    history: list[Any] = field(default_factory=list)
    error: str | None = None


def model_overview(config: Config) -> ModelOverview:
    """Champion, challenger and previous versions with their metrics, and the alias history."""
    try:  # MLflow loads on first use
        from anomaly import registry
        from anomaly.tracking import AUTO_CHOSEN, auto_metric, tracking_uri

        uri = tracking_uri(config)
    except Exception as exc:
        return ModelOverview(config.name, "", error=f"MLflow is not available: {exc}")
    try:
        if not registry.has_model(config):
            return ModelOverview(config.name, uri)  # nothing trained yet
        by_version = registry.aliased_versions(config)
        versions = []
        for version, aliases in sorted(by_version.items(), key=lambda kv: -int(kv[0])):
            mv, run = registry.version_and_run(config, version)
            metrics = dict(run.data.metrics) if run else {}
            chosen = run.data.tags.get(AUTO_CHOSEN) if run else None
            candidates = {
                kind: metrics[auto_metric(kind)]
                for kind in sorted({k.split(".")[1] for k in metrics if k.startswith("auto.")})
                if auto_metric(kind) in metrics
            }
            created = time.strftime(
                "%Y-%m-%d %H:%M UTC", time.gmtime((mv.creation_timestamp or 0) / 1000)
            )
            versions.append(
                VersionInfo(version, aliases, mv.run_id, created, metrics, chosen, candidates)
            )
        events = list(reversed(registry.history(config))) if versions else []
    except Exception as exc:
        return ModelOverview(config.name, uri, error=f"the registry could not be read: {exc}")
    return ModelOverview(config.name, uri, versions, events)
