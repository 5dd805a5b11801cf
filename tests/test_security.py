"""Security: model artifacts load without unpickling (a crafted pickle is refused and never
runs), every file of a registered model is checked against the SHA-256 recorded at registration
before anything is loaded or run, no input reaches a shell or an unsafe loader, and batch files
never lead to writes outside the inbox and the outputs."""

from __future__ import annotations

import ast
import contextlib
import io
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from anomaly import integrity, registry
from anomaly.config import Config, load_config
from anomaly.demo_data import generate_normal
from anomaly.detector import Detector
from anomaly.pipeline import process_batch, scored_dir, train_and_store
from anomaly.store import store_engine
from anomaly.tracking import tracking_uri
from anomaly.training import train
from flows.cli import app as cli

REPO = Path(__file__).resolve().parents[1]
ARTIFACT_FILES = [
    "model/weights.npz",
    "model/config.json",
    "calibration.npz",
    "calibration.json",
    "preprocessing.json",
    "detector.json",
    "neighbours.npz",
]


def make_config(root: Path) -> Config:
    settings = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    settings["name"] = "security"
    settings["model"]["kind"] = "gaussian"
    settings["data"] = {"train": str(root / "train.parquet"), "inbox": str(root / "inbox")}
    root.mkdir(parents=True, exist_ok=True)
    generate_normal(1000, seed=0).to_parquet(root / "train.parquet")
    (root / "config.yaml").write_text(yaml.safe_dump(settings))
    return load_config(root / "config.yaml", home=root / "home")


class Payload:
    """Unpickling this creates a file: proof that a pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved")
    detector = train(make_config(root), generate_normal(1000, seed=0)).detector
    return detector.save(root / "detector")


@pytest.mark.parametrize("target", ARTIFACT_FILES)
def test_a_crafted_pickle_in_an_artifact_is_refused_and_never_runs(saved, tmp_path, target):
    folder = shutil.copytree(saved, tmp_path / "detector")
    marker = tmp_path / "pwned"
    (folder / target).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match=r"refusing to load the detector in .*(pickled|JSON)"):
        Detector.load(folder)
    assert not marker.exists()


def test_an_object_array_in_the_weights_is_refused(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "detector")
    with np.load(folder / "model" / "weights.npz") as data:
        arrays = {key: data[key] for key in data.files}
    first = next(iter(arrays))
    arrays[first] = np.array([Payload(tmp_path / "pwned")], dtype=object)
    np.savez(folder / "model" / "weights.npz", **arrays)
    with pytest.raises(ValueError, match="holds pickled data"):
        Detector.load(folder)
    assert not (tmp_path / "pwned").exists()


def test_the_untouched_detector_loads(saved):
    detector = Detector.load(saved)
    assert np.isfinite(detector.score(generate_normal(20, seed=3)).scored["log_likelihood"]).all()


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> Config:
    config = make_config(tmp_path_factory.mktemp("registered"))
    train_and_store(config)
    return config


def test_a_tampered_registered_model_is_refused(registered, tmp_path):
    weights = list((registered.home / "mlflow").rglob("weights.npz"))
    assert weights, "the registered model's weights are stored under ANOMALY_HOME/mlflow"
    marker = tmp_path / "pwned"
    originals = {path: path.read_bytes() for path in weights}
    try:
        for path in weights:
            path.write_bytes(pickle.dumps(Payload(marker)))
        with pytest.raises(integrity.IntegrityError, match=r"weights\.npz does not match"):
            registry.load_detector(registered)
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
    assert not marker.exists()
    registry.load_detector(registered)  # restored: loads again


# ---------------------------------------------------------------------------- model integrity


def stored_model(config: Config) -> Path:
    """The registered model's folder in the artifact store (ANOMALY_HOME/mlflow)."""
    (mlmodel,) = (config.home / "mlflow").rglob("MLmodel")
    return mlmodel.parent


@contextlib.contextmanager
def swapped(path: Path, data: bytes) -> Iterator[None]:
    """``path`` holds ``data`` inside the block, its own bytes again after it."""
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(original)


def test_registration_records_the_hash_of_every_model_file(registered):
    folder = stored_model(registered)
    tags = MlflowClient(tracking_uri(registered)).get_model_version(registered.name, "1").tags
    recorded = integrity.from_tags(tags)
    assert recorded == integrity.file_hashes(folder)
    assert {"pyfunc_entry.py", "MLmodel", "artifacts/detector/model/weights.npz"} <= set(recorded)


def _doors(config: Config) -> dict[str, object]:
    """Every way the project loads a registered model; each returns what it loaded or raises."""
    from anomaly.dashboard.registry_view import Detectors
    from flows.score import load_model

    def dashboard() -> object:
        detector, error = Detectors(config).get("1")
        if error:
            raise integrity.IntegrityError(error)
        return detector

    def cli_score() -> object:
        result = CliRunner(env={"ANOMALY_HOME": str(config.home)}).invoke(
            cli, ["verify-model", "--config", str(config.home.parent / "config.yaml")]
        )
        if result.exit_code:
            raise integrity.IntegrityError(result.output)
        return result.output

    return {
        "library": lambda: registry.load_detector(config),
        "pyfunc": lambda: registry.load_pyfunc(config),
        "flow task": lambda: load_model.fn(config, None),
        "dashboard": dashboard,
        "cli": cli_score,
    }


DOORS = ["library", "pyfunc", "flow task", "dashboard", "cli"]


@pytest.mark.parametrize("door", DOORS)
def test_a_swapped_code_file_is_refused_before_it_runs(registered, tmp_path, door):
    marker = tmp_path / "pwned"
    code = (
        f"open({str(marker)!r}, 'w').close()\n"
        + (stored_model(registered) / "pyfunc_entry.py").read_text()
    )
    entry = stored_model(registered) / "pyfunc_entry.py"
    with swapped(entry, code.encode()), pytest.raises(integrity.IntegrityError) as refused:
        _doors(registered)[door]()
    message = str(refused.value).strip()
    assert "pyfunc_entry.py does not match the SHA-256 recorded at registration" in message
    assert len(message.splitlines()) == 1
    assert not marker.exists()
    assert _doors(registered)[door]()  # restored: loads again


@pytest.mark.parametrize("door", DOORS)
def test_a_swapped_weights_file_is_refused_through_every_door(registered, door):
    weights = stored_model(registered) / "artifacts" / "detector" / "model" / "weights.npz"
    with np.load(weights, allow_pickle=False) as data:
        arrays = {key: data[key] + 1.0 for key in data.files}  # a valid file, other numbers
    other = io.BytesIO()
    np.savez(other, **arrays)
    with (
        swapped(weights, other.getvalue()),
        pytest.raises(integrity.IntegrityError, match=r"weights\.npz does not match"),
    ):
        _doors(registered)[door]()


def test_an_added_or_missing_file_is_refused(registered):
    folder = stored_model(registered)
    extra = folder / "sitecustomize.py"
    extra.write_text("raise SystemExit\n")
    try:
        with pytest.raises(integrity.IntegrityError, match=r"sitecustomize\.py was not there"):
            registry.load_detector(registered)
    finally:
        extra.unlink()
    with swapped(folder / "MLmodel", b""):
        (folder / "MLmodel").unlink()
        with pytest.raises(integrity.IntegrityError, match="MLmodel is missing"):
            registry.load_detector(registered)


def test_a_version_without_recorded_hashes_is_refused(tmp_path):
    (tmp_path / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(integrity.IntegrityError, match="no recorded file hashes"):
        integrity.verify(tmp_path, {}, "model 'x' version 1")


def test_load_context_checks_the_detector_even_outside_the_project(registered, monkeypatch):
    """``mlflow.pyfunc.load_model`` straight from the registry (as ``mlflow models serve``
    does): the pyfunc's own ``load_context`` refuses a detector file that was swapped."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(registered))
    calibration = stored_model(registered) / "artifacts" / "detector" / "calibration.json"
    with (
        swapped(calibration, calibration.read_bytes().replace(b"0", b"1", 1)),
        pytest.raises(integrity.IntegrityError, match=r"calibration\.json does not match"),
    ):
        mlflow.pyfunc.load_model(f"models:/{registered.name}/1")
    assert mlflow.pyfunc.load_model(f"models:/{registered.name}/1") is not None


def test_verify_model_keeps_a_verified_copy_to_serve(registered, tmp_path):
    out = tmp_path / "verified"
    config_file = registered.home.parent / "config.yaml"
    result = CliRunner(env={"ANOMALY_HOME": str(registered.home)}).invoke(
        cli, ["verify-model", "--config", str(config_file), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "every file matches" in result.output
    assert integrity.file_hashes(out) == integrity.file_hashes(stored_model(registered))
    assert mlflow.pyfunc.load_model(str(out)) is not None


def test_a_batch_path_leading_out_of_the_inbox_is_scored_in_place(registered, tmp_path):
    inbox = Path(registered.data.inbox)
    inbox.mkdir(exist_ok=True)
    outside = inbox.parent / "outside.csv"
    generate_normal(30, seed=4).to_csv(outside, index=False)
    detector, version = registry.load_detector(registered)
    path = inbox / ".." / "outside.csv"
    summary = process_batch(registered, detector, version, path, store_engine(registered))
    assert summary is not None
    assert summary.status == "scored"
    assert outside.is_file()  # not claimed, not moved: it is not an inbox batch
    assert not (inbox / "processed").exists()
    assert Path(summary.output).parent == scored_dir(registered)


# ---------------------------------------------------------------------------- code scan
#: calls that would hand input to a shell or to an unpickler
FORBIDDEN = {
    ("os", "system"): "shell",
    ("os", "popen"): "shell",
    ("pickle", "load"): "unpickling",
    ("pickle", "loads"): "unpickling",
    ("yaml", "load"): "unsafe YAML (use yaml.safe_load)",
    ("yaml", "unsafe_load"): "unsafe YAML",
    (None, "eval"): "eval",
    (None, "exec"): "exec",
}


def risky_calls(path: Path) -> list[str]:
    """Calls in ``path`` that could run input: shells, pickles, eval, unsafe loaders."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):  # x.f(...): the owner's name, "" if not a name
            owner = func.value.id if isinstance(func.value, ast.Name) else ""
        else:
            owner = None
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        keywords = {k.arg: k.value for k in node.keywords}
        where = f"{path.parent.name}/{path.name}:{node.lineno}"
        if (owner, name) in FORBIDDEN:
            found.append(f"{where} {owner}.{name}: {FORBIDDEN[owner, name]}")
        if owner == "subprocess" and "shell" in keywords:
            found.append(f"{where} subprocess with shell=")
        if name == "load" and owner in ("np", "numpy"):
            allow = keywords.get("allow_pickle")
            if not (isinstance(allow, ast.Constant) and allow.value is False):
                found.append(f"{where} np.load without allow_pickle=False")
        if name == "load" and owner == "torch":
            safe = keywords.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                found.append(f"{where} torch.load without weights_only=True")
    return found


def test_no_input_reaches_a_shell_or_an_unpickler():
    sources = sorted((REPO / "anomaly").rglob("*.py")) + sorted((REPO / "flows").rglob("*.py"))
    assert len(sources) > 20
    found = [hit for path in sources for hit in risky_calls(path)]
    assert found == []


def test_the_scan_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "risky.py"
    sample.write_text(
        "import os, pickle, subprocess, numpy as np\n"
        "os.system(x)\npickle.loads(b)\nsubprocess.run(x, shell=True)\nnp.load(f)\neval(s)\n"
        "np.load(f, allow_pickle=False)\n"
    )
    assert len(risky_calls(sample)) == 5
