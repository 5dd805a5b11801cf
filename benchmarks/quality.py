"""Detection quality on the ADBench classical datasets (BENCHMARK.md, section 1).

    python benchmarks/quality.py [--datasets Hepatitis,wine] [--detectors anomaly-gmm,pyod-IForest]
                                 [--seeds 0,1,2] [--out benchmarks/results/quality.csv]

Data: ``*.npz`` files (keys ``X``, ``y``; ``y == 1`` anomaly) in ``$ANOMALY_BENCH_DATA``, default
``<repo>/../shared/datasets/adbench``.

Protocol, per dataset and seed: shuffle the normal rows with the seed; training = 60 % of normals
(at most 20,000, random subset), calibration = the next 10 % (at most 5,000), test = the remaining
normals (at most 20,000) plus all anomalies (at most 20,000, random subset). Columns constant on
the training rows are dropped; every column is standardised with the training mean and standard
deviation (zero deviation → 1). Detectors fit on the training rows only; a score is "higher = more
anomalous" (``-log_prob`` for the project's kinds, which are given the training columns' lattice
steps, ``anomaly.models.lattice_layout``, as the pipeline's preprocessor gives them;
``decision_function`` for PyOD, ``-score_samples`` for scikit-learn). Metrics on the test rows:
AUROC, average precision; the threshold is the 99th percentile of the calibration scores, and the
realised false-positive rate on test normals and recall on test anomalies at that threshold are
recorded, with fit and score seconds (score = calibration + test rows). Beside them,
``calibrated_fpr``/``calibrated_recall`` are the same rates for the project's conformal calibrator
(``anomaly.calibration.Calibrator``, rule ``fpr``, alpha 0.01) fitted on the same calibration
scores: it flags p <= 0.01, which guarantees FPR <= 1 % and flags nothing when there are under 99
calibration rows.

Every (dataset, seed, detector) runs in a forked child process with ``--threads`` torch threads
(default 2) and is killed after ``--timeout`` seconds (default 300, the protocol's limit). A
detector that raises, returns NaN/inf, dies or times out is written as a failure row. A timeout
already fails that detector on that dataset, so its later seeds on the dataset are written as
failures ("skipped: timed out on seed S") without running. One CSV row is appended (and flushed)
per run as soon as it finishes; rows already in the CSV are skipped, so an interrupted run
resumes where it stopped. ``--cpu-seconds`` records fit and score seconds as the child's CPU
time instead of wall time: with one thread that is close to the quiet machine's wall time, for
runs on a shared, loaded machine (then raise ``--timeout`` too).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import multiprocessing as mp
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)
TIMEOUT_S = 300.0
#: fit/score seconds are the child's CPU time, not wall time (``--cpu-seconds``)
CPU_SECONDS = False
THREADS = 2
FIELDS = [
    "dataset",
    "seed",
    "detector",
    "status",
    "error",
    "auroc",
    "auprc",
    "threshold_fpr",
    "threshold_recall",
    "calibrated_fpr",
    "calibrated_recall",
    "fit_s",
    "score_s",
    "n_train",
    "n_cal",
    "n_test_normal",
    "n_test_anomaly",
    "n_features",
]

Scorer = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


# ---------------------------------------------------------------------------------- detectors
def _project(kind: str) -> Scorer:
    def run(X_train: np.ndarray, X_score: np.ndarray, seed: int) -> np.ndarray:
        from anomaly.models import KINDS, create, lattice_layout
        from anomaly.models.torch_density import TorchDensity

        torch_params = {"progress": False, "n_threads": THREADS}
        torch_kinds = [k for k, cls in KINDS.items() if issubclass(cls, TorchDensity)]
        if kind in torch_kinds:
            params: dict[str, Any] = dict(torch_params)
        elif kind == "auto":
            params = {"candidate_params": {k: dict(torch_params) for k in torch_kinds}}
        else:
            params = {}
        # discrete columns (a lattice of values on the training rows) get probability mass
        model = create(kind, seed=seed, **params).fit(X_train, layout=lattice_layout(X_train))
        return _timed_score(lambda: -np.asarray(model.log_prob(X_score), dtype=float))

    return run


def _pyod(name: str) -> Scorer:
    def run(X_train: np.ndarray, X_score: np.ndarray, seed: int) -> np.ndarray:
        det = _make_pyod(name, X_train.shape[1], seed)
        det.fit(X_train)
        return _timed_score(lambda: np.asarray(det.decision_function(X_score), dtype=float))

    return run


def _make_pyod(name: str, n_features: int, seed: int) -> Any:
    # library defaults; only the seed (where the API has one), quiet output and CPU are set
    if name == "IForest":
        from pyod.models.iforest import IForest

        return IForest(random_state=seed)
    if name == "ECOD":
        from pyod.models.ecod import ECOD

        return ECOD()
    if name == "KNN":
        from pyod.models.knn import KNN

        return KNN()
    if name == "LOF":
        from pyod.models.lof import LOF

        return LOF()
    if name == "OCSVM":
        from pyod.models.ocsvm import OCSVM

        return OCSVM()
    if name == "GMM":
        from pyod.models.gmm import GMM

        return GMM(random_state=seed)
    if name == "KDE":
        from pyod.models.kde import KDE

        return KDE()
    if name == "AutoEncoder":
        from pyod.models.auto_encoder import AutoEncoder

        return AutoEncoder(random_state=seed, verbose=0, device="cpu")
    if name == "VAE":
        from pyod.models.vae import VAE

        return VAE(random_state=seed, verbose=0, device="cpu")
    if name == "DeepSVDD":
        from pyod.models.deep_svdd import DeepSVDD

        return DeepSVDD(n_features=n_features, random_state=seed, verbose=0)
    msg = f"unknown PyOD detector {name!r}"
    raise ValueError(msg)


def _sklearn_gmm_bic(X_train: np.ndarray, X_score: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    best, best_bic = None, np.inf
    for k in range(1, 11):
        gm = GaussianMixture(n_components=k, random_state=seed).fit(X_train)
        bic = gm.bic(X_train)
        if bic < best_bic:
            best, best_bic = gm, bic
    assert best is not None
    return _timed_score(lambda: -best.score_samples(X_score))


def _sklearn_kde_scott(X_train: np.ndarray, X_score: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.neighbors import KernelDensity

    n, d = X_train.shape
    kde = KernelDensity(bandwidth=n ** (-1.0 / (d + 4))).fit(X_train)  # Scott, standardised data
    return _timed_score(lambda: -kde.score_samples(X_score))


_SCORE_SECONDS: list[float] = []


def _clock() -> float:
    return time.process_time() if CPU_SECONDS else time.perf_counter()


def _timed_score(fn: Callable[[], np.ndarray]) -> np.ndarray:
    start = _clock()
    out = fn()
    _SCORE_SECONDS.append(_clock() - start)
    return out


def detectors() -> dict[str, Scorer]:
    from anomaly.models import KINDS

    out: dict[str, Scorer] = {f"anomaly-{kind}": _project(kind) for kind in KINDS}
    for name in (
        "IForest",
        "ECOD",
        "KNN",
        "LOF",
        "OCSVM",
        "GMM",
        "KDE",
        "AutoEncoder",
        "VAE",
        "DeepSVDD",
    ):
        out[f"pyod-{name}"] = _pyod(name)
    out["sklearn-GMM-BIC"] = _sklearn_gmm_bic
    out["sklearn-KDE-Scott"] = _sklearn_kde_scott
    return out


# ---------------------------------------------------------------------------------- data
def data_dir() -> Path:
    env = os.environ.get("ANOMALY_BENCH_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "datasets" / "adbench").resolve()


def dataset_name(path: Path) -> str:
    stem = path.stem
    head, _, tail = stem.partition("_")
    return tail if head.isdigit() and tail else stem


def split(X: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Training, calibration and test rows (standardised) and the test labels."""
    rng = np.random.default_rng(seed)
    normals = rng.permutation(np.flatnonzero(y == 0))
    anomalies = rng.permutation(np.flatnonzero(y == 1))
    n = len(normals)
    n_train, n_cal = int(0.6 * n), int(0.1 * n)
    train = normals[:n_train][:20_000]
    cal = normals[n_train : n_train + n_cal][:5_000]
    test_normal = normals[n_train + n_cal :][:20_000]
    test_anomaly = anomalies[:20_000]
    test = np.concatenate([test_normal, test_anomaly])
    X_train = X[train]
    keep = ~np.all(X_train == X_train[:1], axis=0)
    X_train = X_train[:, keep]
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std == 0] = 1.0

    def scale(rows: np.ndarray) -> np.ndarray:
        return (X[rows][:, keep] - mean) / std

    return {
        "train": scale(train),
        "cal": scale(cal),
        "test": scale(test),
        "y_test": np.concatenate([np.zeros(len(test_normal)), np.ones(len(test_anomaly))]),
    }


# ---------------------------------------------------------------------------------- one run
def _child(scorer: Scorer, parts: dict[str, np.ndarray], seed: int, conn: Any) -> None:
    try:
        import torch

        torch.set_num_threads(THREADS)
        warnings.filterwarnings("ignore")
        X_score = np.concatenate([parts["cal"], parts["test"]])
        _SCORE_SECONDS.clear()
        start = _clock()
        scores = scorer(parts["train"], X_score, seed)
        total = _clock() - start
        score_s = _SCORE_SECONDS[-1] if _SCORE_SECONDS else float("nan")
        scores = np.asarray(scores, dtype=float).ravel()
        if scores.shape != (len(X_score),):
            msg = f"expected {len(X_score)} scores, got shape {scores.shape}"
            raise ValueError(msg)
        if not np.all(np.isfinite(scores)):
            bad = int((~np.isfinite(scores)).sum())
            msg = f"{bad} non-finite scores (NaN/inf)"
            raise ValueError(msg)
        conn.send({"status": "ok", "scores": scores, "fit_s": total - score_s, "score_s": score_s})
    except BaseException as exc:  # report every failure to the parent, never crash silently
        tb = traceback.format_exc(limit=3).strip().splitlines()
        conn.send({"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300], "tb": tb})
    finally:
        conn.close()


def run_one(scorer: Scorer, parts: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    from anomaly.calibration import Calibrator

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(scorer, parts, seed, send), daemon=True)
    start = time.perf_counter()
    proc.start()
    send.close()
    result: dict[str, Any]
    if recv.poll(TIMEOUT_S):
        try:
            result = recv.recv()
        except EOFError:
            proc.join(5)
            result = {"status": "failed", "error": f"process died (exit code {proc.exitcode})"}
    else:
        result = {"status": "failed", "error": f"timeout: > {TIMEOUT_S:.0f} s"}
    elapsed = time.perf_counter() - start
    if proc.is_alive():
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    recv.close()
    if result["status"] != "ok":
        result.setdefault("fit_s", elapsed)
        return result
    n_cal = len(parts["cal"])
    cal_scores, test_scores = result["scores"][:n_cal], result["scores"][n_cal:]
    y = parts["y_test"]
    threshold = np.percentile(cal_scores, 99)
    flagged = test_scores > threshold
    with warnings.catch_warnings():  # under 99 calibration rows nothing can be flagged at 1 %
        warnings.simplefilter("ignore", UserWarning)
        calibrator = Calibrator(rule="fpr", alpha=0.01).fit(cal_scores)
    conformal = calibrator.flag(calibrator.p_values(test_scores))
    return {
        "status": "ok",
        "error": "",
        "auroc": roc_auc_score(y, test_scores),
        "auprc": average_precision_score(y, test_scores),
        "threshold_fpr": flagged[y == 0].mean(),
        "threshold_recall": flagged[y == 1].mean(),
        "calibrated_fpr": conformal[y == 0].mean(),
        "calibrated_recall": conformal[y == 1].mean(),
        "fit_s": result["fit_s"],
        "score_s": result["score_s"],
    }


# ---------------------------------------------------------------------------------- main
def _done(out: Path) -> tuple[set[tuple[str, str, str]], dict[tuple[str, str], str]]:
    """Runs already in the CSV, and the seed on which each (dataset, detector) timed out."""
    if not out.is_file():
        return set(), {}
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    done = {(r["dataset"], r["seed"], r["detector"]) for r in rows}
    timed_out = {
        (r["dataset"], r["detector"]): r["seed"] for r in rows if r["error"].startswith("timeout")
    }
    return done, timed_out


def _fmt(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return f"{value:.6g}"
    return value


def main() -> None:
    global THREADS, TIMEOUT_S, CPU_SECONDS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="", help="comma list of name substrings")
    parser.add_argument("--detectors", default="", help="comma list of detector names")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quality.csv"))
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads per run")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per run")
    parser.add_argument(
        "--cpu-seconds", action="store_true", help="record fit/score as CPU, not wall, seconds"
    )
    args = parser.parse_args()
    THREADS, TIMEOUT_S, CPU_SECONDS = args.threads, args.timeout, args.cpu_seconds

    folder = data_dir()
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if not files:
        sys.exit(
            f"no ADBench .npz files in {folder}: set ANOMALY_BENCH_DATA to the folder holding "
            "the datasets (see BENCHMARK.md)"
        )
    wanted = [s.strip().lower() for s in args.datasets.split(",") if s.strip()]
    if wanted:
        # keep the order the user gave (e.g. small datasets first)
        ordered: list[Path] = []
        for w in wanted:
            ordered += [f for f in files if w in dataset_name(f).lower() and f not in ordered]
        files = ordered
    if not files:
        sys.exit(f"no dataset in {folder} matches --datasets {args.datasets!r}")
    all_detectors = detectors()
    names = [s.strip() for s in args.detectors.split(",") if s.strip()] or list(all_detectors)
    unknown = [n for n in names if n not in all_detectors]
    if unknown:
        sys.exit(f"unknown detectors {unknown}; choose from: {', '.join(all_detectors)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]

    # import the heavy libraries once so every forked child starts warm
    for module in ("pyod.models.auto_encoder", "pyod.models.deep_svdd", "sklearn.mixture"):
        importlib.import_module(module)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done, timed_out = _done(out)
    new_file = not out.is_file() or out.stat().st_size == 0
    print(
        f"data {folder}: {len(files)} datasets × {len(seeds)} seeds × {len(names)} detectors, "
        f"torch threads {THREADS}, timeout {TIMEOUT_S:.0f} s, cores {os.cpu_count()} → {out}",
        flush=True,
    )
    with out.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, lineterminator="\n")
        if new_file:
            writer.writeheader()
            fh.flush()
        for path in files:
            name = dataset_name(path)
            with np.load(path) as npz:
                X, y = np.asarray(npz["X"], dtype=np.float64), np.asarray(npz["y"]).astype(int)
            for seed in seeds:
                todo = [d for d in names if (name, str(seed), d) not in done]
                if not todo:
                    continue
                parts = split(X, y, seed)
                sizes = {
                    "n_train": len(parts["train"]),
                    "n_cal": len(parts["cal"]),
                    "n_test_normal": int((parts["y_test"] == 0).sum()),
                    "n_test_anomaly": int((parts["y_test"] == 1).sum()),
                    "n_features": parts["train"].shape[1],
                }
                for det in todo:
                    if (name, det) in timed_out:
                        earlier = timed_out[name, det]
                        res = {"status": "failed", "error": f"skipped: timed out on seed {earlier}"}
                    else:
                        res = run_one(all_detectors[det], parts, seed)
                        if res["error"].startswith("timeout"):
                            timed_out[name, det] = str(seed)
                    row = {"dataset": name, "seed": seed, "detector": det, **sizes}
                    row.update({k: _fmt(v) for k, v in res.items() if k in FIELDS})
                    writer.writerow(row)
                    fh.flush()
                    if res["status"] == "ok":
                        info = (
                            f"AUROC {res['auroc']:.3f} AP {res['auprc']:.3f} "
                            f"FPR {res['threshold_fpr']:.3f} fit {res['fit_s']:.1f}s "
                            f"score {res['score_s']:.2f}s"
                        )
                    else:
                        info = f"FAILED ({res['error']})"
                    print(f"{name} seed={seed} {det}: {info}", flush=True)


if __name__ == "__main__":
    main()
