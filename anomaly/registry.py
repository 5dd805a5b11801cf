"""The MLflow model registry: versions, the aliases ``champion``/``challenger``/``previous``,
and an append-only history of every alias change (MLflow keeps none).

Each version carries the SHA-256 of every file of its model as tags ``sha256.<path>``, recorded
at registration; every load through the project checks them first (:mod:`anomaly.integrity`).

Each alias change is written twice: as tags on the version it points to
(``alias.<name>.by/at/reason``) and as a registered-model tag ``history.<time>`` holding the
whole event as JSON, which :func:`history` reads back in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from anomaly import integrity
from anomaly.config import Config
from anomaly.tracking import active, client

if TYPE_CHECKING:
    from anomaly.detector import Detector

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"


class RegistryError(LookupError):
    """The registry has no such model, version or alias."""


@dataclasses.dataclass(frozen=True)
class AliasEvent:
    """One alias change."""

    alias: str
    version: str
    replaced: str | None
    by: str
    at: str
    reason: str


def _who() -> str:
    return os.environ.get("ANOMALY_USER") or getpass.getuser()


def alias_version(config: Config, alias: str) -> str | None:
    """The version ``alias`` points to, or None."""
    try:
        return str(client(config).get_model_version_by_alias(config.name, alias).version)
    except MlflowException:
        return None


def has_model(config: Config) -> bool:
    """Whether a model of the config's name is registered (False: nothing trained yet)."""
    try:
        client(config).get_registered_model(config.name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def aliased_versions(config: Config) -> dict[str, list[str]]:
    """The versions ``champion``, ``challenger`` and ``previous`` point to, each with its
    aliases."""
    by_version: dict[str, list[str]] = {}
    for alias in (CHAMPION, CHALLENGER, PREVIOUS):
        version = alias_version(config, alias)
        if version is not None:
            by_version.setdefault(version, []).append(alias)
    return by_version


def version_and_run(config: Config, version: str) -> tuple[ModelVersion, Run | None]:
    """A registered version and the MLflow run that trained it (None when it names none)."""
    c = client(config)
    mv = c.get_model_version(config.name, version)
    return mv, c.get_run(mv.run_id) if mv.run_id else None


def set_alias(config: Config, alias: str, version: str, reason: str) -> AliasEvent:
    """Point ``alias`` at ``version`` and record who, when and why."""
    c = client(config)
    event = AliasEvent(
        alias=alias,
        version=str(version),
        replaced=alias_version(config, alias),
        by=_who(),
        at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        reason=reason,
    )
    c.set_registered_model_alias(config.name, alias, event.version)
    for key in ("by", "at", "reason"):
        c.set_model_version_tag(
            config.name, event.version, f"alias.{alias}.{key}", getattr(event, key)
        )
    c.set_registered_model_tag(config.name, f"history.{time.time_ns()}", json.dumps(event.__dict__))
    return event


def register(config: Config, model_id: str, run_id: str) -> str:
    """Register a logged model as a new version with alias ``challenger``; returns the version."""
    c = client(config)
    with contextlib.suppress(MlflowException):  # exists already
        c.create_registered_model(config.name)
    source = f"models:/{model_id}"
    with active(config), tempfile.TemporaryDirectory() as tmp:
        logged = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)
        hashes = integrity.file_hashes(Path(logged))
    with active(config):  # MLflow resolves the source through its global tracking URI
        created = c.create_model_version(config.name, source, run_id, model_id=model_id)
    version = str(created.version)
    for key, digest in integrity.as_tags(hashes).items():
        c.set_model_version_tag(config.name, version, key, digest)
    set_alias(config, CHALLENGER, version, f"trained in run {run_id}")
    return str(version)


def promote(config: Config, version: str, reason: str) -> list[AliasEvent]:
    """Make ``version`` the champion; the former champion becomes ``previous``."""
    current = alias_version(config, CHAMPION)
    if current == str(version):
        return []
    events = []
    if current is not None:
        events.append(set_alias(config, PREVIOUS, current, f"replaced by v{version}: {reason}"))
    events.append(set_alias(config, CHAMPION, version, reason))
    return events


def rollback(config: Config, reason: str) -> list[AliasEvent]:
    """Put ``previous`` back as champion (the rolled-back champion becomes ``previous``)."""
    previous = alias_version(config, PREVIOUS)
    if previous is None:
        msg = f"model {config.name!r} has no 'previous' version to roll back to"
        raise RegistryError(msg)
    return promote(config, previous, f"rollback: {reason}")


def history(config: Config) -> list[AliasEvent]:
    """Every alias change of the model, oldest first."""
    try:
        tags = client(config).get_registered_model(config.name).tags
    except MlflowException as exc:
        msg = f"no registered model named {config.name!r}; run `anomaly train` first"
        raise RegistryError(msg) from exc
    keys = sorted((k for k in tags if k.startswith("history.")), key=lambda k: int(k[8:]))
    return [AliasEvent(**json.loads(tags[k])) for k in keys]


def model_uri(config: Config, version: str | None = None) -> str:
    """``models:/NAME@champion`` or ``models:/NAME/VERSION``."""
    return f"models:/{config.name}/{version}" if version else f"models:/{config.name}@{CHAMPION}"


def resolve_version(config: Config, version_or_alias: str) -> str:
    """The version number an alias points to, or the version itself if it exists."""
    if version_or_alias in (CHAMPION, CHALLENGER, PREVIOUS):
        found = alias_version(config, version_or_alias)
        if found is None:
            hint = (
                " (the first trained model becomes champion)"
                if version_or_alias == CHAMPION
                else ""
            )
            msg = f"model {config.name!r} has no {version_or_alias} yet: run `anomaly train`{hint}"
            raise RegistryError(msg)
        return found
    try:
        return str(client(config).get_model_version(config.name, version_or_alias).version)
    except MlflowException as exc:
        msg = f"model {config.name!r} has no version {version_or_alias!r}"
        raise RegistryError(msg) from exc


def download_verified(config: Config, version: str, dst: Path | None = None) -> Path:
    """Download a registered version's files (to ``dst``, else a temporary folder) and check
    them against the SHA-256 recorded at registration; :class:`anomaly.integrity.IntegrityError`
    names the first file that differs, is missing or was added."""
    uri = model_uri(config, version)
    try:
        with active(config):  # models:/ URIs resolve through the global registry URI
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=None if dst is None else str(dst)
            )
        tags = client(config).get_model_version(config.name, version).tags
    except MlflowException as exc:
        msg = f"cannot load {uri}: {exc.message}"
        raise RegistryError(msg) from exc
    integrity.verify(
        Path(local), integrity.from_tags(tags), f"model {config.name!r} version {version}"
    )
    return Path(local)


def load_detector(config: Config, version: str | None = None) -> tuple[Detector, str]:
    """The detector of the champion (or ``version``) and its version number, read directly
    from the registered model's artifacts (no pyfunc wrapper, no pickle) once their hashes
    match those recorded at registration."""
    version = resolve_version(config, version or CHAMPION)
    local = download_verified(config, version)
    from anomaly.detector import Detector  # torch loads only when a model does

    return Detector.load(local / "artifacts" / "detector"), str(version)


def load_pyfunc(config: Config, version: str | None = None) -> Any:
    """The champion (or ``version``) as an MLflow pyfunc, loaded from a downloaded copy whose
    every file, the code file MLflow runs first included, matches the registered hashes."""
    version = resolve_version(config, version or CHAMPION)
    return mlflow.pyfunc.load_model(str(download_verified(config, version)))


def sample(
    config: Config,
    n: int,
    seed: int = 0,
    version: str | None = None,
    context: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """``n`` synthetic records in raw feature space from the champion (or ``version``),
    given the ``context`` column values when the feature spec has context columns."""
    detector, _ = load_detector(config, version)
    return detector.sample(n, seed=seed, context=context)
