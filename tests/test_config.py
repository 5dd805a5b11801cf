"""Tests for anomaly.config: loading, ${ANOMALY_HOME} expansion, path resolution, clear errors."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from anomaly.config import Config, ConfigError, load_config
from anomaly.models import KINDS

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def minimal() -> dict:
    return {
        "name": "shop",
        "features": {"id": "tx", "numeric": ["amount"], "categorical": ["channel"]},
        "data": {"train": "data/train.parquet", "inbox": "inbox"},
    }


def write(folder: Path, settings: object, name: str = "config.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(settings))
    return path


# ------------------------------------------------------------------- loading
def test_demo_config_loads(tmp_path):
    config = load_config(DEMO, home=tmp_path)
    assert isinstance(config, Config)
    raw = yaml.safe_load(DEMO.read_text())
    assert config.name == raw["name"]
    assert config.features.id == raw["features"]["id"]
    assert config.features.numeric == raw["features"]["numeric"]
    assert config.features.categorical == raw["features"]["categorical"]
    assert config.model.kind == raw["model"]["kind"]
    assert config.calibration.alpha == raw["calibration"]["alpha"]
    assert config.home == tmp_path.resolve()
    assert config.data.train == str(tmp_path.resolve() / "demo" / "train.parquet")
    assert config.data.inbox == str(tmp_path.resolve() / "demo" / "inbox")
    assert config.data.labels == str(tmp_path.resolve() / "demo" / "labels" / "*.parquet")


def test_packaged_demo_config_matches_repository_copy():
    assert (REPO / "anomaly" / "demo.yaml").read_text() == DEMO.read_text()


def test_defaults(tmp_path):
    config = load_config(write(tmp_path, minimal()), home=tmp_path)
    assert config.model.kind in KINDS
    assert 0 < config.calibration.alpha < 1
    assert config.scoring.chunk_rows > 0
    assert config.features.timestamp is None


def test_anomaly_home_from_argument_wins_over_environment(tmp_path, monkeypatch):
    env_home, arg_home = tmp_path / "env-home", tmp_path / "arg-home"
    monkeypatch.setenv("ANOMALY_HOME", str(env_home))
    settings = minimal()
    settings["data"]["train"] = "${ANOMALY_HOME}/train.csv"
    path = write(tmp_path / "cfg", settings)

    from_env = load_config(path)
    assert from_env.home == env_home.resolve()
    assert from_env.data.train == str(env_home.resolve() / "train.csv")

    from_arg = load_config(path, home=arg_home)
    assert from_arg.home == arg_home.resolve()
    assert from_arg.data.train == str(arg_home.resolve() / "train.csv")


def test_default_home_is_dot_anomaly_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("ANOMALY_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path / "cfg", minimal()))
    assert config.home == (tmp_path / ".anomaly").resolve()


def test_other_environment_variables_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOP_DATA", str(tmp_path / "lake"))
    settings = minimal()
    settings["data"]["train"] = "${SHOP_DATA}/normal/*.parquet"
    config = load_config(write(tmp_path, settings), home=tmp_path)
    assert config.data.train == str((tmp_path / "lake").resolve() / "normal" / "*.parquet")


def test_relative_data_paths_resolve_against_config_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = minimal()
    settings["data"] = {
        "train": "data/train.parquet",
        "inbox": "../shared/inbox",
        "labels": str(tmp_path / "abs" / "labels.csv"),
    }
    path = write(tmp_path / "project" / "conf", settings)
    # a relative config path, resolved from the working directory
    config = load_config(Path("..") / "project" / "conf" / "config.yaml", home=tmp_path)
    conf_dir = (tmp_path / "project" / "conf").resolve()
    assert config.data.train == str(conf_dir / "data" / "train.parquet")
    assert config.data.inbox == str((tmp_path / "project" / "shared" / "inbox").resolve())
    assert config.data.labels == str((tmp_path / "abs" / "labels.csv").resolve())
    assert Path(config.data.train).is_absolute()
    assert path.is_file()


# ------------------------------------------------------------------- invalid configs
def _set(settings: dict, dotted: str, value: object) -> dict:
    out = copy.deepcopy(settings)
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def _drop(settings: dict, dotted: str) -> dict:
    out = copy.deepcopy(settings)
    *parents, leaf = dotted.split(".")
    node = out
    for key in parents:
        node = node[key]
    del node[leaf]
    return out


INVALID = [
    pytest.param(
        _set(minimal(), "model.depth", 3),
        "model.depth",
        "Extra inputs are not permitted",
        id="unknown-nested-key",
    ),
    pytest.param(
        _set(minimal(), "mlflow.uri", "http://x"),
        "mlflow.uri",
        "Extra inputs are not permitted",
        id="unknown-mlflow-key",
    ),
    pytest.param(
        _set(minimal(), "colour", "red"),
        "colour",
        "Extra inputs are not permitted",
        id="unknown-top-key",
    ),
    pytest.param(
        _set(minimal(), "model.kind", "forest"),
        "model.kind",
        "unknown model kind 'forest'; expected one of",
        id="bad-model-kind",
    ),
    pytest.param(
        _set(minimal(), "calibration.alpha", 1.5),
        "calibration.alpha",
        "less than 1",
        id="alpha-too-big",
    ),
    pytest.param(
        _set(minimal(), "calibration.alpha", 0),
        "calibration.alpha",
        "greater than 0",
        id="alpha-zero",
    ),
    pytest.param(
        _set(minimal(), "calibration.rule", "fwer"),
        "calibration.rule",
        "'fpr' or 'fdr'",
        id="bad-rule",
    ),
    pytest.param(
        _set(minimal(), "scoring.chunk_rows", "many"),
        "scoring.chunk_rows",
        "valid integer",
        id="wrong-type-int",
    ),
    pytest.param(
        _set(minimal(), "scoring.chunk_rows", 0),
        "scoring.chunk_rows",
        "greater than 0",
        id="chunk-rows-zero",
    ),
    pytest.param(
        _set(minimal(), "features.numeric", "amount"),
        "features.numeric",
        "valid list",
        id="wrong-type-list",
    ),
    pytest.param(
        _set(minimal(), "data.train", 5), "data.train", "valid string", id="wrong-type-path"
    ),
    pytest.param(
        _set(minimal(), "features.categorical", ["channel", "amount"]),
        "features",
        "columns listed twice: ['amount']",
        id="column-twice",
    ),
    pytest.param(
        _set(minimal(), "features.id", "amount"),
        "features",
        "columns listed twice: ['amount']",
        id="id-is-a-feature",
    ),
    pytest.param(
        _set(_set(minimal(), "features.numeric", []), "features.categorical", []),
        "features",
        "name at least one numeric or categorical column",
        id="no-features",
    ),
    pytest.param(_drop(minimal(), "features.id"), "features.id", "Field required", id="missing-id"),
    pytest.param(_drop(minimal(), "data"), "data", "Field required", id="missing-data"),
    pytest.param(
        _set(_set(minimal(), "split.calibration", 0.5), "split.test", 0.45),
        "split",
        "at least 10 % of rows",
        id="split-leaves-nothing",
    ),
    pytest.param(_set(minimal(), "name", "my shop"), "name", "should match pattern", id="bad-name"),
]


@pytest.mark.parametrize(("settings", "where", "expected"), INVALID)
def test_invalid_config_names_key_and_expectation(tmp_path, settings, where, expected):
    path = write(tmp_path, settings)
    with pytest.raises(ConfigError, match=rf"(?m)^\s*{re.escape(where)}: .*{re.escape(expected)}"):
        load_config(path, home=tmp_path)


def test_every_bad_key_is_reported(tmp_path):
    settings = _set(_set(minimal(), "model.kind", "forest"), "calibration.alpha", 2)
    path = write(tmp_path, settings)
    with pytest.raises(ConfigError, match=re.escape(str(path))) as info:
        load_config(path, home=tmp_path)
    message = str(info.value)
    assert "model.kind" in message
    assert "calibration.alpha" in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "must hold a mapping of settings, got list"),
        ("just a string\n", "must hold a mapping of settings, got str"),
        ("", "must hold a mapping of settings, got NoneType"),
    ],
    ids=["list", "scalar", "empty"],
)
def test_non_mapping_yaml(tmp_path, text, expected):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path, home=tmp_path)


def test_invalid_yaml(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("name: shop\nfeatures: [id, amount\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))} is not valid YAML"):
        load_config(path, home=tmp_path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"config file not found: {re.escape(str(path))}"):
        load_config(path, home=tmp_path)


def test_a_folder_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path, home=tmp_path)
