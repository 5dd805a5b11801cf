"""What a command imports decides how long it takes to start (issue 14: torch, scikit-learn,
MLflow and Prefect cost seconds each). Each check runs in a fresh interpreter and lists the
heavy packages that ended up in ``sys.modules``; the times themselves are measured by
``benchmarks/flow_overhead.py --part commands``, not here."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anomaly.config import Config, load_config
from anomaly.demo_data import generate_normal, plant_anomalies
from anomaly.training import train

REPO = Path(__file__).resolve().parents[1]
#: packages, and modules of them, that cost a command tenths of a second or more to import
HEAVY = [
    "alembic", "mlflow", "pandas", "prefect", "scipy", "scipy.stats", "sklearn", "sqlalchemy",
    "torch",
]  # fmt: skip


def imported(code: str, *args: object) -> set[str]:
    """The packages and modules of :data:`HEAVY` imported by running ``code`` in a new
    interpreter."""
    names = "{m.split('.')[0] for m in sys.modules} | set(sys.modules)"
    report = f"\nimport sys\nprint(sorted(({names}) & set({HEAVY})))"
    result = subprocess.run(
        [sys.executable, "-c", code + report, *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))


def make_config(folder: Path, kind: str) -> Config:
    settings = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    params = {"max_epochs": 2, "progress": False} if kind == "flow" else {}
    settings["model"] = {"kind": kind, "seed": 0, "params": params}
    settings["data"].pop("evaluation")
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return load_config(path, home=folder / "home")


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    frame, _ = plant_anomalies(generate_normal(300, seed=7), rate=0.05, seed=7)
    path = tmp_path_factory.mktemp("batch") / "batch.parquet"
    frame.to_parquet(path, index=False)
    return path


def test_the_cli_imports_nothing_heavy():
    """``--help``, user errors and the commands that run no model start light."""
    assert imported("import flows.cli") == set()


def test_the_scoring_library_imports_no_model_kind():
    """The pipeline (what the score flow calls) imports no torch and no scikit-learn until a
    model of a kind that needs them is loaded."""
    assert not imported("import anomaly.pipeline, anomaly.models") & {"torch", "sklearn"}


NO_TORCH = {"torch", "sklearn", "scipy.stats"}


@pytest.mark.parametrize(
    ("kind", "absent"),
    [
        ("gaussian", NO_TORCH),
        ("independent", NO_TORCH),
        ("knn", NO_TORCH),
        ("kde", NO_TORCH),
        ("flow", {"sklearn", "scipy.stats"}),
    ],
)
def test_scoring_imports_only_what_the_kind_needs(kind, absent, tmp_path, batch):
    """A saved detector loaded and scoring a batch (explanations and the shift test of a
    batch with flagged rows included): torch only for the kinds that are torch networks
    (``knn``/``kde`` fit with torch but score with numpy), scikit-learn (needed to fit some
    kinds) and scipy.stats never."""
    config = make_config(tmp_path, kind)
    saved = train(config, generate_normal(2_000, seed=1)).detector.save(tmp_path / "detector")
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from anomaly.detector import Detector\nfrom anomaly.scoring import score_file\n"
        "summary = score_file(Detector.load(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))\n"
        "assert summary.rows_flagged > 0, summary"
    )
    found = imported(code, saved, batch, tmp_path / "out")
    assert not found & absent, f"scoring with {kind} imported {sorted(found & absent)}"
    assert "torch" in found or kind != "flow"  # the check sees imports at all
