"""The YAML configuration, validated by pydantic.

Relative paths resolve against the config file's folder; ``${ANOMALY_HOME}`` and other
environment variables are expanded (``ANOMALY_HOME`` defaults to ``./.anomaly``).
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from anomaly.schema import SCORE_COLUMNS, column_list


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the bad key and what was expected."""


def anomaly_home() -> Path:
    """The state directory: ``$ANOMALY_HOME`` or ``./.anomaly``."""
    return Path(os.environ.get("ANOMALY_HOME", ".anomaly")).resolve()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Features(_Strict):
    """Which columns the model reads, and what to do with values it cannot score."""

    id: str = Field(description="column holding a unique record id")
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    context: list[str] = Field(
        default_factory=list,
        description="columns conditioned on, not judged: the model scores log p(x | context)",
    )
    timestamp: str | None = None
    numeric_transform: Literal["auto", "none"] = Field(
        "auto", description="auto: signed log for heavy-tailed non-negative columns"
    )

    @model_validator(mode="after")
    def _check_columns(self) -> Features:
        if not self.numeric and not self.categorical:
            msg = "name at least one numeric or categorical column"
            raise ValueError(msg)
        names = column_list(self.id, self.numeric, self.categorical, self.context, self.timestamp)
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            msg = f"columns listed twice: {duplicated}"
            raise ValueError(msg)
        return self


class Data(_Strict):
    """Where training data and incoming batches live."""

    train: str = Field(description="CSV/Parquet file or glob of normal rows")
    inbox: str | None = Field(None, description="folder where batch files land")
    labels: str | None = Field(None, description="file/glob of id + is_anomaly for batch rows")
    evaluation: str | None = Field(
        None, description="file/glob of labelled rows: the features plus a boolean is_anomaly"
    )


#: the kinds of ``anomaly.models.KINDS``, named here so that validating a config loads no torch
#: (tests/test_serve.py checks that the two agree)
MODEL_KINDS = ("gaussian", "gmm", "kde", "knn", "flow", "vae", "auto", "independent",
               "autoregressive")  # fmt: skip


class ModelSpec(_Strict):
    kind: str = "auto"
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in MODEL_KINDS:
            msg = f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}"
            raise ValueError(msg)
        return kind


class Split(_Strict):
    """Fractions of the normal rows held out from fitting."""

    calibration: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _leaves_training(self) -> Split:
        if self.calibration + self.test >= 0.9:
            msg = "calibration + test must leave at least 10 % of rows for training"
            raise ValueError(msg)
        return self


class Calibration(_Strict):
    rule: Literal["fpr", "fdr"] = "fpr"
    alpha: float = Field(0.01, gt=0, lt=1)
    shift_pvalue: float = Field(0.001, gt=0, lt=1)


class Scoring(_Strict):
    chunk_rows: int = Field(100_000, gt=0)
    explain_rows: int = Field(
        1_000,
        ge=0,
        description="flagged rows explained per batch, lowest log-likelihood first "
        "(the rest are stored without contributions; `anomaly explain` explains any row)",
    )
    dask_address: str | None = Field(
        None, description="Dask scheduler (tcp://host:8786): batches run on its workers"
    )
    split_rows: int | None = Field(
        None,
        gt=0,
        description="with `dask_address`: a Parquet batch of more rows is scored in parts of "
        "about this many rows (whole chunks) on several workers, then merged into one batch; "
        "default: a file is one task",
    )
    passthrough: list[str] | Literal["all"] | None = Field(
        None,
        description="input columns copied into the scored Parquet: a list, or `all`; "
        "default: the feature columns",
    )

    @field_validator("passthrough")
    @classmethod
    def _copyable(cls, names: list[str] | str | None) -> list[str] | str | None:
        if not isinstance(names, list):
            return names
        clash = sorted({n for n in names if n in SCORE_COLUMNS})
        if clash:
            msg = f"{clash} name(s) the scored output's own columns {list(SCORE_COLUMNS)}"
            raise ValueError(msg)
        if any(not n.strip() for n in names) or len(set(names)) < len(names):
            msg = "column names must be non-empty and listed once"
            raise ValueError(msg)
        return names


class Tracking(_Strict):
    """MLflow: a server URI, or (default) a SQLite file under ANOMALY_HOME."""

    tracking_uri: str | None = Field(
        None, description="MLflow server URI; default $MLFLOW_TRACKING_URI or local SQLite"
    )
    experiment: str | None = Field(None, description="experiment name (default: name)")


class Promotion(_Strict):
    """The gate a challenger must pass to become champion (all rules must hold)."""

    max_loglik_drop: float = Field(
        0.05, ge=0, description="held-out log-likelihood may fall by at most this (nats/record)"
    )
    max_auroc_drop: float = Field(0.0, ge=0, description="AUROC may fall by at most this")
    max_fpr_ratio: float = Field(
        2.0, gt=0, description="realised FPR on normal rows at most this × alpha"
    )


class Training(_Strict):
    include_false_positives: bool = Field(
        True, description="rows reviewed as false positives join the training data"
    )


class Schedule(_Strict):
    """Cron schedules of the deployments ``anomaly serve`` runs (None: not scheduled)."""

    timezone: str = "UTC"
    score: str | None = Field("*/10 * * * *", description="scan the inbox")
    train: str | None = Field("0 3 * * 0", description="retrain, then run the promotion gate")


class Store(_Strict):
    url: str | None = Field(None, description="SQLAlchemy URL; default SQLite under ANOMALY_HOME")


_PASSWORD_HASH = r"^pbkdf2_sha256:\d+:[A-Za-z0-9_-]+:[0-9a-f]{64}$"
_TOKEN_HASH = r"^sha256:[0-9a-f]{64}$"


class Dashboard(_Strict):
    """The review dashboard: who may write (hashed secrets only), and whether reading needs a
    login. More users/tokens come from the environment variables named here, as
    ``name=hash,name=hash``."""

    users: dict[str, str] = Field(
        default_factory=dict, description="reviewer → password hash (`anomaly hash-password`)"
    )
    tokens: dict[str, str] = Field(
        default_factory=dict,
        description="reviewer → API token hash (`anomaly hash-password --token`)",
    )
    users_env: str = "ANOMALY_DASHBOARD_USERS"
    tokens_env: str = "ANOMALY_DASHBOARD_TOKENS"
    secret_key_env: str = Field(
        "ANOMALY_DASHBOARD_SECRET", description="env var holding the key that signs sessions"
    )
    open_reads: bool = Field(False, description="anyone may read pages and the API; writes never")
    session_hours: float = Field(12.0, gt=0, description="a login lasts this long")
    mlflow_url: str | None = Field(None, description="MLflow UI address the model page links to")
    hsts: bool = Field(
        False,
        description="served over HTTPS: send Strict-Transport-Security and mark cookies Secure",
    )
    login_failures: int = Field(
        5, ge=1, description="failed logins of one account before it is locked out for a while"
    )
    login_failures_per_address: int = Field(
        20, ge=1, description="failed logins from one client address before it is locked out"
    )

    @field_validator("users")
    @classmethod
    def _hashed_passwords(cls, users: dict[str, str]) -> dict[str, str]:
        return _check_hashes(users, _PASSWORD_HASH, "pbkdf2_sha256:ITERATIONS:SALT:HEX")

    @field_validator("tokens")
    @classmethod
    def _hashed_tokens(cls, tokens: dict[str, str]) -> dict[str, str]:
        return _check_hashes(tokens, _TOKEN_HASH, "sha256:HEX")


def _check_hashes(entries: dict[str, str], pattern: str, form: str) -> dict[str, str]:
    """Refuse plain-text secrets; the message names the user, never the secret."""
    import re

    bad = sorted(name for name, value in entries.items() if not re.fullmatch(pattern, value))
    if bad:
        msg = (
            f"secrets of {bad} are not hashes of the form {form}: "
            "create them with `anomaly hash-password`"
        )
        raise ValueError(msg)
    return entries


class Config(_Strict):
    """A whole pipeline configuration."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    features: Features
    data: Data
    model: ModelSpec = ModelSpec()
    split: Split = Split()
    calibration: Calibration = Calibration()
    scoring: Scoring = Scoring()
    mlflow: Tracking = Tracking()
    promotion: Promotion = Promotion()
    training: Training = Training()
    schedule: Schedule = Schedule()
    store: Store = Store()
    dashboard: Dashboard = Dashboard()
    home: Path = Field(default_factory=anomaly_home)


def _expand(value: Any, env: dict[str, str], where: str = "") -> Any:
    """Substitute ``${VAR}`` in every string of a parsed YAML tree; unknown names fail."""
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{where}{k}.") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{where}{i}.") for i, v in enumerate(value)]
    if isinstance(value, str):
        try:
            return string.Template(value).substitute(env)
        except KeyError as exc:
            msg = f"  {where.rstrip('.')}: environment variable {exc.args[0]} is not set"
            raise ConfigError(msg) from None
        except ValueError:  # a lone "$": keep the text as written
            return value
    return value


def _describe(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {err['msg']}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path, home: Path | None = None) -> Config:
    """Read and validate a YAML config; raise :class:`ConfigError` naming every bad key.

    The state directory is, first to last: the ``home`` argument, the file's own ``home:``
    key (relative to the file's folder), ``$ANOMALY_HOME``, ``./.anomaly``.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"config file not found: {path}"
        raise ConfigError(msg)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        msg = f"{path} is not valid YAML: {exc}"
        raise ConfigError(msg) from exc
    if not isinstance(raw, dict):
        msg = f"{path} must hold a mapping of settings, got {type(raw).__name__}"
        raise ConfigError(msg)
    if home is None and isinstance(raw.get("home"), str):
        home = path.parent / os.path.expandvars(raw["home"])
    home = (home or anomaly_home()).resolve()
    try:
        raw = _expand(raw, {**os.environ, "ANOMALY_HOME": str(home)})
    except ConfigError as exc:
        msg = f"invalid config {path}:\n{exc}"
        raise ConfigError(msg) from None
    raw["home"] = str(home)
    data = raw.get("data")
    if isinstance(data, dict):
        raw["data"] = {
            k: str((path.parent / v).resolve()) if isinstance(v, str) else v
            for k, v in data.items()
        }
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        msg = f"invalid config {path}:\n{_describe(exc)}"
        raise ConfigError(msg) from exc
