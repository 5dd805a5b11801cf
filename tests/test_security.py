"""Security: model artifacts load without unpickling (a crafted pickle is refused and never
runs), no input reaches a shell or an unsafe loader, and batch files never lead to writes
outside the inbox and the outputs."""

from __future__ import annotations

import ast
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from anomaly import registry
from anomaly.config import Config, load_config
from anomaly.demo_data import generate_normal
from anomaly.detector import Detector
from anomaly.pipeline import process_batch, scored_dir, store_engine, train_and_store
from anomaly.training import train

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
        with pytest.raises(ValueError, match="holds pickled data"):
            registry.load_detector(registered)
    finally:
        for path, data in originals.items():
            path.write_bytes(data)
    assert not marker.exists()
    registry.load_detector(registered)  # restored: loads again


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
