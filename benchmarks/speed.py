"""Scoring speed and memory (BENCHMARK.md, section 2).

    python benchmarks/speed.py [--sizes 100000,1000000] [--kinds gaussian,knn] [--threads 2]
                               [--raw-only] [--no-io] [--work /tmp/anomaly-speed]
                               [--out benchmarks/results/speed.csv]

Data: a synthetic table of N rows × 20 numeric features plus an integer id (seeded: a
three-cluster Gaussian mixture on 6 latent dimensions, mapped to 20 columns linearly and through
tanh, with noise; columns f0–f2 are log-normal "amounts"), written to Parquet in row groups of
100,000 rows. Each kind is fitted once, in its own process, on 20,000 training rows of the same
generator (another seed) and calibrated on 5,000 more; torch kinds train for only
``TORCH_EPOCHS`` epochs, which changes their weights but not the cost of scoring a row.

Per kind, each measurement in a fresh process with ``--threads`` torch/BLAS threads, after a
warm-up:

(a) raw: rows/s of ``model.log_prob`` on an in-memory float32 array (the preprocessed first row
    group), timed for at least ``MIN_SECONDS`` or all of it;
(b) end-to-end: rows/s of ``anomaly.scoring.score_file`` (read Parquet → validate → preprocess →
    score → calibrate → write the scored Parquet) + ``anomaly.store.write_batch`` (flagged and
    quarantined rows into a fresh SQLite review store), the path the score flow takes;
    The seconds spent explaining the flagged rows (``BatchSummary.explain_seconds``) are
    reported too, with the rows/s of (b) without them: an explanation searches each flagged
    row's features (hundreds of ``log_prob`` rows per flagged row, except the closed-form
    ``gaussian``), a cost that grows with the flag rate, not with the pipeline;
(c) the peak resident memory (``ru_maxrss``) of the process that ran (b), per N;
(e) the bare I/O limit on the same file, without the detector: read the batch's Parquet
    columns (pyarrow, one row group at a time), build the output columns (the id as text, the
    features, the four score columns as constants) and write them to a Parquet file. It runs
    in the process of (b), just before and just after it (the two are averaged), so both see
    the same load; the end-to-end rate of every kind is reported as a fraction of it, and in
    the CSV the same fraction by process CPU seconds (``e2e_over_io_cpu``: (e)'s CPU ÷ (b)'s);
(d) the peer of the same family scoring the same rows as (a): ``gaussian`` → scikit-learn
    ``LedoitWolf.mahalanobis``, ``gmm`` → scikit-learn ``GaussianMixture.score_samples`` (as
    many components as the project's model chose), ``kde`` → PyOD ``KDE``, ``knn`` → PyOD
    ``KNN``, ``vae`` → PyOD ``VAE``, ``independent`` → PyOD ``HBOS`` (per-feature histograms);
    ``flow``, ``autoregressive`` and ``auto`` have no peer in PyOD or scikit-learn. Peers are fitted
    on the same 20,000 preprocessed training rows with library defaults (deep peers:
    ``TORCH_EPOCHS`` epochs).

Prints a markdown table (ratios: (b)/(a) = share of the raw speed the pipeline keeps; (b)/(e) =
distance to the I/O limit; (a)/(d) = speed against the peer) and writes a CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
N_FEATURES = 20
ROW_GROUP = 100_000
N_TRAIN, N_CAL = 20_000, 5_000
TORCH_EPOCHS = 3
MIN_SECONDS = 5.0
WARMUP_ROWS = 2_000
DEFAULT_KINDS = ("gaussian", "gmm", "independent", "kde", "knn", "flow", "vae", "autoregressive")
FIELDS = [
    "kind",
    "n_rows",
    "threads",
    "raw_rows_s",
    "e2e_rows_s",
    "io_rows_s",
    "e2e_over_raw",
    "e2e_over_io",
    "explain_seconds",
    "e2e_no_explain_rows_s",
    "e2e_no_explain_over_raw",
    "peak_rss_mb",
    "peer",
    "peer_rows_s",
    "raw_over_peer",
    "rows_flagged",
    "e2e_seconds",
    "error",
    "e2e_cpu_seconds",
    "io_cpu_seconds",
    "e2e_over_io_cpu",
]


# ---------------------------------------------------------------------------------- data
def synthetic(n: int, seed: int) -> Any:
    """``n`` rows: id + f0..f19 (see the module docstring)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    layout = np.random.default_rng(12345)  # the same mixture and maps for every call
    means = layout.normal(0, 2.0, (3, 6))
    mix_w, mix_v = layout.normal(0, 1.0, (6, N_FEATURES)), layout.normal(0, 1.0, (6, N_FEATURES))
    cluster = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    z = means[cluster] + rng.standard_normal((n, 6))
    x = z @ mix_w / 2 + np.tanh(z @ mix_v / 3) + 0.3 * rng.standard_normal((n, N_FEATURES))
    x[:, :3] = np.exp(x[:, :3] / 4 + 3)  # heavy-tailed positive "amounts"
    frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(N_FEATURES)])
    frame.insert(0, "id", np.arange(n, dtype=np.int64) + seed * 10**10)
    return frame


def write_parquet(path: Path, n: int, seed: int) -> Path:
    """The N-row batch file, generated and written one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.is_file() and pq.ParquetFile(path).metadata.num_rows == n:
        return path
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, n, ROW_GROUP):
        frame = synthetic(min(ROW_GROUP, n - start), seed * 1_000_003 + start // ROW_GROUP)
        frame["id"] += start
        table = pa.Table.from_pandas(frame, preserve_index=False)
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=ROW_GROUP)
    assert writer is not None
    writer.close()
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------- children
def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def _model_params(kind: str, threads: int) -> dict[str, Any]:
    from anomaly.models import KINDS
    from anomaly.models.torch_density import TorchDensity

    torch_kinds = [k for k, cls in KINDS.items() if issubclass(cls, TorchDensity)]
    torch_params = {"progress": False, "n_threads": threads, "max_epochs": TORCH_EPOCHS}
    if kind in torch_kinds:
        return torch_params
    if kind == "auto":
        return {"candidate_params": {k: dict(torch_params) for k in torch_kinds}}
    return {}


def child_fit(kind: str, model_dir: Path, threads: int) -> dict[str, Any]:
    """Fit preprocessing + model + calibrator on synthetic rows and save the detector."""
    from anomaly import models
    from anomaly.calibration import Calibrator
    from anomaly.config import Features
    from anomaly.detector import Detector
    from anomaly.preprocessing import Preprocessor

    features = Features(id="id", numeric=[f"f{j}" for j in range(N_FEATURES)])
    train, cal = synthetic(N_TRAIN, seed=1), synthetic(N_CAL, seed=2)
    pre = Preprocessor(features).fit(train)
    fit_part, cal_part = pre.transform(train), pre.transform(cal)
    start = time.perf_counter()
    model = models.create(kind, seed=0, **_model_params(kind, threads))
    model.fit(fit_part.X, layout=pre.layout_)
    fit_s = time.perf_counter() - start
    cal_ll = model.log_prob(cal_part.X) + cal_part.log_det
    calibrator = Calibrator(rule="fpr", alpha=0.01).fit(-cal_ll)
    Detector(pre, model, calibrator, {"name": "speed", "kind": kind}).save(model_dir)
    np.save(model_dir / "train_X.npy", fit_part.X)
    return {"fit_s": fit_s}


def _peer(kind: str, model: Any, X_train: np.ndarray, seed: int = 0) -> tuple[str, Any]:
    """(name, scoring function) of the same-family peer fitted on X_train, or ("", None)."""
    if kind == "gaussian":
        from sklearn.covariance import LedoitWolf

        est = LedoitWolf().fit(X_train)
        return "sklearn LedoitWolf", est.mahalanobis
    if kind == "gmm":
        from sklearn.mixture import GaussianMixture

        k = int(getattr(model, "n_components_", 1))
        est = GaussianMixture(n_components=k, random_state=seed).fit(X_train)
        return f"sklearn GaussianMixture({k})", est.score_samples
    if kind in ("kde", "knn", "vae", "independent"):
        from pyod.models.hbos import HBOS
        from pyod.models.kde import KDE
        from pyod.models.knn import KNN
        from pyod.models.vae import VAE

        make = {
            "kde": ("PyOD KDE", lambda: KDE()),
            "knn": ("PyOD KNN", lambda: KNN()),
            "vae": (
                "PyOD VAE",
                lambda: VAE(random_state=seed, verbose=0, device="cpu", epoch_num=TORCH_EPOCHS),
            ),
            "independent": ("PyOD HBOS", lambda: HBOS()),
        }
        name, factory = make[kind]
        det = factory().fit(X_train)
        return name, det.decision_function
    return "", None


def _rows_per_second(fn: Any, X: np.ndarray) -> float:
    """Rows/s of fn over chunks of X, for at least MIN_SECONDS or all rows (after a warm-up)."""
    fn(X[:WARMUP_ROWS])
    done, start, step = 0, time.perf_counter(), 10_000
    while done < len(X):
        fn(X[done : done + step])
        done += len(X[done : done + step])
        if time.perf_counter() - start >= MIN_SECONDS:
            break
    return done / (time.perf_counter() - start)


def child_raw(kind: str, model_dir: Path, data: Path, threads: int) -> dict[str, Any]:
    """(a) raw log_prob rows/s and (d) the peer's rows/s on the first row group."""
    import pyarrow.parquet as pq
    import torch

    from anomaly.detector import Detector

    torch.set_num_threads(threads)
    detector = Detector.load(model_dir)
    frame = pq.ParquetFile(data).read_row_group(0).to_pandas()
    X = detector.preprocessor.transform(frame).X.astype(np.float32)
    model = detector.model
    peer, fn = _peer(kind, model, np.load(model_dir / "train_X.npy"))  # fits: no inference_mode
    with torch.inference_mode():
        raw = _rows_per_second(model.log_prob, X)
        peer_rows_s = _rows_per_second(fn, X) if fn is not None else float("nan")
    return {"raw_rows_s": raw, "peer": peer, "peer_rows_s": peer_rows_s}


def child_e2e(
    model_dir: Path, data: Path, work: Path, threads: int, io: bool = True
) -> dict[str, Any]:
    """(b) end-to-end rows/s of score_file + write_batch, (c) this process's peak RSS and (e)
    the bare I/O on the same file, measured just before and just after (b) and averaged, so
    that both see the same load on a shared machine (not with ``io`` False)."""
    import pandas as pd
    import torch

    from anomaly.detector import Detector
    from anomaly.scoring import score_file
    from anomaly.store import connect, write_batch

    torch.set_num_threads(threads)
    detector = Detector.load(model_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    engine = connect(f"sqlite:///{work / 'review.db'}")
    id_col = detector.preprocessor.features.id
    warm = write_parquet(work / "warmup.parquet", WARMUP_ROWS, seed=3)

    def run(path: Path) -> Any:
        summary = score_file(detector, path, work / "scored", model_version="1")
        if summary.status != "scored":
            msg = f"batch rejected: {summary.error}"
            raise RuntimeError(msg)
        flagged = summary.flagged_rows if summary.flagged_rows is not None else pd.DataFrame()
        quarantined = summary.quarantined if summary.quarantined is not None else pd.DataFrame()
        write_batch(engine, summary, "speed", flagged, quarantined, id_col)
        return summary

    def io_seconds() -> tuple[float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        bare_io(data, work / "io.parquet")
        return time.perf_counter() - start, time.process_time() - cpu

    run(warm)
    bare_io(warm, work / "io.parquet")
    io_before, io_cpu_before = io_seconds() if io else (np.nan, np.nan)
    start, cpu = time.perf_counter(), time.process_time()
    summary = run(data)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB → MiB on Linux
    io_after, io_cpu_after = io_seconds() if io else (np.nan, np.nan)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "io_rows_s": summary.rows_in / ((io_before + io_after) / 2),
        "e2e_rows_s": summary.rows_in / seconds,
        "e2e_seconds": seconds,
        "e2e_cpu_seconds": cpu,
        # the same ratio by CPU seconds (process time), which a shared machine's load distorts less
        "io_cpu_seconds": (io_cpu_before + io_cpu_after) / 2,
        "e2e_over_io_cpu": (io_cpu_before + io_cpu_after) / 2 / cpu,
        "explain_seconds": summary.explain_seconds,
        "e2e_no_explain_rows_s": summary.rows_in / (seconds - summary.explain_seconds),
        "peak_rss_mb": peak,
        "rows_flagged": summary.rows_flagged,
    }


def bare_io(path: Path, out: Path) -> int:
    """(e) read ``path``'s columns and write a Parquet file of the output columns (a scored
    output's schema, with constant scores), one row group at a time; the rows done."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows, writer = 0, None
    with path.open("rb") as handle, pq.ParquetFile(handle, pre_buffer=False) as source:
        for batch in source.iter_batches(batch_size=ROW_GROUP):
            n = batch.num_rows
            columns = [pc.cast(batch.column(0), pa.string()), *batch.columns[1:]]
            columns += [
                pa.nulls(n, pa.float64()).fill_null(0.0),
                pa.nulls(n, pa.float64()).fill_null(1.0),
                pa.nulls(n, pa.bool_()).fill_null(False),
                pa.repeat(pa.scalar("", pa.string()), n),
            ]
            names = [*batch.schema.names, "log_likelihood", "p_value", "is_anomaly", "reason"]
            table = pa.Table.from_arrays(columns, names=names)
            writer = writer or pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
            rows += n
    if writer is not None:
        writer.close()
    out.unlink(missing_ok=True)
    return rows


def _in_child(args: list[str], threads: int) -> dict[str, Any]:
    """Run this script with ``args`` in a fresh process; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    proc = subprocess.run(
        [sys.executable, __file__, *args, "--threads", str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"exit {proc.returncode}: {tail}"[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- table
def _num(value: Any, fmt: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if np.isnan(v) else format(v, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the CSV rows."""
    lines = [
        "| kind | N | raw rows/s (a) | end-to-end rows/s (b) | I/O limit rows/s (e) | (b)/(a) "
        "| (b)/(e) | explain s | (b) w/o explain | its /(a) | peak RSS MB (c) | peer (d) "
        "| peer rows/s | (a)/(d) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {int(r['n_rows']):,} | {_num(r.get('raw_rows_s'), ',.0f')} "
            f"| {_num(r.get('e2e_rows_s'), ',.0f')} | {_num(r.get('io_rows_s'), ',.0f')} "
            f"| {_num(r.get('e2e_over_raw'), '.2f')} | {_num(r.get('e2e_over_io'), '.2f')} "
            f"| {_num(r.get('explain_seconds'), ',.1f')} "
            f"| {_num(r.get('e2e_no_explain_rows_s'), ',.0f')} "
            f"| {_num(r.get('e2e_no_explain_over_raw'), '.2f')} "
            f"| {_num(r.get('peak_rss_mb'), ',.0f')} | {r.get('peer') or '—'} "
            f"| {_num(r.get('peer_rows_s'), ',.0f')} | {_num(r.get('raw_over_peer'), '.2f')} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma list of N")
    parser.add_argument("--kinds", default=",".join(DEFAULT_KINDS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--raw-only", action="store_true", help="measure (a) and (d) only")
    parser.add_argument("--no-io", action="store_true", help="skip (e), the bare I/O passes")
    parser.add_argument("--work", default="/tmp/anomaly-speed")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speed.csv"))
    parser.add_argument("--child", choices=["fit", "raw", "e2e"], help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)

    if args.child:
        _set_threads(args.threads)
        model_dir = work / "models" / str(args.kind)
        if args.child == "fit":
            result = child_fit(args.kind, model_dir, args.threads)
        elif args.child == "raw":
            result = child_raw(args.kind, model_dir, Path(args.data), args.threads)
        else:
            e2e_work = work / f"e2e-{args.kind}"
            result = child_e2e(model_dir, Path(args.data), e2e_work, args.threads, not args.no_io)
        print(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    work.mkdir(parents=True, exist_ok=True)
    print(f"threads {args.threads} (torch + BLAS), cores {os.cpu_count()}, work {work}", flush=True)
    files = {}
    for n in sizes:
        start = time.perf_counter()
        files[n] = write_parquet(work / f"batch_{n}.parquet", n, seed=100)
        print(f"data N={n:,}: {files[n]} ({time.perf_counter() - start:.0f} s)", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        fit = _in_child(["--child", "fit", "--kind", kind, "--work", str(work)], args.threads)
        if "error" in fit:
            print(f"{kind}: fit failed: {fit['error']}", flush=True)
            continue
        raw = _in_child(
            ["--child", "raw", "--kind", kind, "--work", str(work), "--data", str(files[sizes[0]])],
            args.threads,
        )
        print(f"{kind}: fit {fit['fit_s']:.0f} s; raw/peer {raw}", flush=True)
        for n in sizes:
            e2e = {}
            if not args.raw_only:
                child = ["--child", "e2e", "--kind", kind, "--work", str(work)]
                child += ["--no-io"] if args.no_io else []
                e2e = _in_child([*child, "--data", str(files[n])], args.threads)
            row = {"kind": kind, "n_rows": n, "threads": args.threads, **raw, **e2e}
            row["e2e_over_raw"] = row.get("e2e_rows_s", np.nan) / row.get("raw_rows_s", np.nan)
            row["e2e_over_io"] = row.get("e2e_rows_s", np.nan) / row.get("io_rows_s", np.nan)
            row["e2e_no_explain_over_raw"] = row.get("e2e_no_explain_rows_s", np.nan) / row.get(
                "raw_rows_s", np.nan
            )
            row["raw_over_peer"] = row.get("raw_rows_s", np.nan) / row.get("peer_rows_s", np.nan)
            print(f"{kind} N={n:,}: {e2e}", flush=True)
            rows.append(row)
            new_file = not out.is_file()
            with out.open("a", newline="") as fh:
                writer = csv.DictWriter(
                    fh, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n"
                )
                if new_file:
                    writer.writeheader()
                writer.writerow({k: row.get(k, "") for k in FIELDS})
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
