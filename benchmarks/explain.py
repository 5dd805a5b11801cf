"""Attribution accuracy of the explanations, per model kind and method, on planted anomalies.

Two suites with known culprit features:

* ``synthetic``: six numeric and two categorical features with built-in dependencies
  (x1 ≈ x0; x4 depends on the category c; x2 heavy-tailed; x3 bimodal). Planted: one feature
  shifted by 6 standard deviations (``shift/*``, culprit: that feature), the x0–x1 pair broken
  (culprits x0 or x1), c changed so x4 no longer fits it (culprits c or x4), and an unseen
  category of g (culprit g).
* ``demo``: the demo generator's planted anomalies (``anomaly.demo_data``), culprits by
  sub-kind: ``global/amount`` → amount, ``global/distance`` → distance_km; the contextual and
  broken-dependency ones → the pair of features whose combination is wrong.

A row counts as a top-k hit when a culprit is among its k largest contributions. "single" rows
have one culprit (shifted feature, unseen category, global extreme); "dependency" rows a pair.
Also measured: seconds to explain 10,000 rows (``explain`` on raw records, the path the
scoring flow takes; wall and this process's CPU seconds, the steadier figure on a shared
machine when run with one thread), and the sample two-sample-test AUROC logged at training
time.

    nice -n 10 .venv/bin/python benchmarks/explain.py            # every kind
    nice -n 10 .venv/bin/python benchmarks/explain.py --kinds gaussian gmm

Prints a markdown table and writes ``benchmarks/results/explain.csv``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly import models
from anomaly.config import Config, Data, Features
from anomaly.demo_data import _plant, generate_normal
from anomaly.detector import Detector
from anomaly.explain import explain
from anomaly.training import train

RESULTS = Path(__file__).with_name("results") / "explain.csv"
#: cheap-but-fair settings for the slow kinds (the defaults otherwise)
PARAMS: dict[str, dict[str, object]] = {
    "flow": {"progress": False},
    "vae": {"progress": False},
    "autoregressive": {"progress": False},
}
DEMO_CULPRITS = {
    "global/amount": {"amount"},
    "global/distance": {"distance_km"},
    "contextual/hour": {"hour", "merchant_category"},
    "contextual/distance": {"distance_km", "merchant_category"},
    "contextual/amount": {"amount", "merchant_category"},
    "broken_dependency/channel": {"channel", "merchant_category"},
    "broken_dependency/account": {"account_age_days", "tx_last_24h"},
}
SYN_FEATURES = Features(
    id="id", numeric=["x0", "x1", "x2", "x3", "x4", "x5"], categorical=["c", "g"]
)
DEMO_FEATURES = Features(
    id="transaction_id",
    timestamp="timestamp",
    numeric=["amount", "hour", "distance_km", "tx_last_24h", "account_age_days"],
    categorical=["merchant_category", "channel"],
)


# ---------------------------------------------------------------------------- suites
def synthetic_normal(n: int, seed: int) -> pd.DataFrame:
    """Normal rows of the synthetic suite."""
    rng = np.random.default_rng(seed)
    x0 = rng.normal(size=n)
    c = rng.integers(0, 4, n)
    return pd.DataFrame(
        {
            "id": [f"s{seed}-{i}" for i in range(n)],
            "x0": x0,
            "x1": x0 + 0.3 * rng.normal(size=n),
            "x2": np.exp(1.0 + 0.5 * rng.normal(size=n)),
            "x3": rng.choice([-2.0, 2.0], n) + 0.5 * rng.normal(size=n),
            "x4": 2.0 * c + 0.5 * rng.normal(size=n),
            "x5": rng.normal(size=n),
            "c": np.array(["a", "b", "c", "d"], dtype=object)[c],
            "g": rng.choice(np.array(["u", "v", "w"], dtype=object), n, p=[0.5, 0.3, 0.2]),
        }
    )


def synthetic_planted(
    normal: pd.DataFrame, per_kind: int, seed: int
) -> tuple[pd.DataFrame, list[str], list[set[str]]]:
    """Planted rows, their sub-kinds and culprit sets."""
    rng = np.random.default_rng(seed)
    frames, kinds, truth = [], [], []

    def take(kind: str, culprits: set[str], change: Callable[[pd.DataFrame], None]) -> None:
        rows = normal.sample(per_kind, random_state=int(rng.integers(2**31))).copy()
        change(rows)
        rows["id"] = [f"{kind}-{i}" for i in range(per_kind)]
        frames.append(rows)
        kinds.extend([kind] * per_kind)
        truth.extend([culprits] * per_kind)

    def sign() -> np.ndarray:
        return rng.choice([-1.0, 1.0], per_kind)

    for col in ("x0", "x3", "x4", "x5"):
        sd = normal[col].std()
        take(
            f"shift/{col}",
            {col},
            lambda r, col=col, sd=sd: r.__setitem__(col, r[col] + 6 * sd * sign()),
        )
    take("shift/x2", {"x2"}, lambda r: r.__setitem__("x2", r["x2"] * np.exp(3.0 * sign())))
    take(
        "broken/x0-x1",
        {"x0", "x1"},
        lambda r: r.__setitem__("x1", r["x0"] + sign() * rng.uniform(1.5, 3.0, per_kind)),
    )
    take(
        "broken/c-x4",
        {"c", "x4"},
        lambda r: r.__setitem__("c", r["c"].map({"a": "c", "b": "d", "c": "a", "d": "b"})),
    )
    take("unseen/g", {"g"}, lambda r: r.__setitem__("g", "z"))
    return pd.concat(frames, ignore_index=True), kinds, truth


def demo_planted(n: int, seed: int) -> tuple[pd.DataFrame, list[str], list[set[str]]]:
    """The demo generator's planted rows with their sub-kinds and culprit sets."""
    frame, _, detail = _plant(generate_normal(n, seed), rate=0.3, seed=seed)
    rows = np.flatnonzero(detail != "")
    kinds = list(detail[rows])
    return frame.iloc[rows].reset_index(drop=True), kinds, [DEMO_CULPRITS[k] for k in kinds]


def group(kind: str) -> str:
    """``single`` (one culprit) or ``dependency`` (a pair of culprits)."""
    return "single" if kind.split("/")[0] in {"shift", "unseen", "global"} else "dependency"


# ---------------------------------------------------------------------------- running
def fit(kind: str, features: Features, data: pd.DataFrame, home: Path) -> tuple[Detector, dict]:
    """Train a detector through the library's training path (sample check included)."""
    config = Config(
        name=f"bench-{kind}",
        features=features,
        data=Data(train=str(home / "unused.parquet")),
        model={"kind": kind, "params": PARAMS.get(kind, {})},
        home=home,
    )
    result = train(config, data)
    return result.detector, result.metrics


def methods(detector: Detector) -> list[str]:
    """The methods run: the model's own; where that is a closed form or a mixture mode
    (``gaussian``, ``gmm``, ``kde``, ``knn``) also the generic search, to compare with it."""
    own = detector.model.explanation_for(detector.preprocessor.layout_)
    return [own, "replacement"] if own in ("closed_form", "mixture") else [own]


def evaluate(
    suite: str, kind: str, detector: Detector, metrics: dict, planted: tuple, speed_rows: int
) -> list[dict[str, object]]:
    """Hit rates per sub-kind for every method, plus timing."""
    frame, kinds, truth = planted
    out = []
    for method in methods(detector):
        explained = explain(detector, frame, top=3, method=method)
        ranked = [[item["feature"] for item in e] for e in explained]
        big = pd.concat([frame] * (speed_rows // len(frame) + 1), ignore_index=True)
        big = big.iloc[:speed_rows].copy()
        big[detector.preprocessor.features.id] = [f"r{i}" for i in range(len(big))]
        start, cpu = time.perf_counter(), time.process_time()
        explain(detector, big, top=5, method=method)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        table = pd.DataFrame(
            {
                "sub_kind": kinds,
                "top1": [bool(r[:1] and r[0] in t) for r, t in zip(ranked, truth, strict=True)],
                "top3": [bool(set(r[:3]) & t) for r, t in zip(ranked, truth, strict=True)],
            }
        )
        for sub, part in table.groupby("sub_kind"):
            out.append(
                {
                    "suite": suite,
                    "kind": kind,
                    "method": method,
                    "sub_kind": sub,
                    "group": group(sub),
                    "rows": len(part),
                    "top1": part["top1"].mean(),
                    "top3": part["top3"].mean(),
                    "explain_seconds_10k": seconds * 10_000 / speed_rows,
                    "explain_cpu_seconds_10k": cpu * 10_000 / speed_rows,
                    "sample_c2st_auroc": metrics.get("sample_c2st_auroc", np.nan),
                    "heldout_log_likelihood": metrics.get("heldout_log_likelihood", np.nan),
                }
            )
        print(
            f"  {suite} {kind} {method}: {seconds:.1f} s ({cpu:.1f} s CPU) for {speed_rows} rows",
            flush=True,
        )
    return out


def summary(results: pd.DataFrame) -> str:
    """Markdown: per suite, kind and method, the hit rates of both groups."""
    rows = []
    keys = ["suite", "kind", "method"]
    for key, part in results.groupby(keys, sort=False):
        weights = part["rows"]

        def rate(g: str, col: str, part: pd.DataFrame = part) -> str:
            p = part[part["group"] == g]
            return f"{np.average(p[col], weights=p['rows']):.0%}" if len(p) else "–"

        rows.append(
            [
                *key,
                rate("single", "top1"),
                rate("single", "top3"),
                rate("dependency", "top1"),
                rate("dependency", "top3"),
                f"{part['explain_seconds_10k'].iloc[0]:.1f}",
                f"{part['explain_cpu_seconds_10k'].iloc[0]:.1f}",
                f"{part['sample_c2st_auroc'].iloc[0]:.3f}",
                str(int(weights.sum())),
            ]
        )
    head = [
        "suite",
        "kind",
        "method",
        "single top-1",
        "single top-3",
        "dependency top-1",
        "dependency top-3",
        "s / 10k rows",
        "CPU s / 10k rows",
        "sample C2ST AUROC",
        "rows",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = [k for k in models.KINDS if k != "auto"]
    parser.add_argument("--kinds", nargs="+", default=default, choices=list(models.KINDS))
    parser.add_argument("--suites", nargs="+", default=["synthetic", "demo"])
    parser.add_argument("--train-rows", type=int, default=8_000)
    parser.add_argument("--per-kind", type=int, default=100, help="synthetic rows per sub-kind")
    parser.add_argument(
        "--speed-rows", type=int, default=10_000, help="rows timed (scaled to 10,000)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    home = Path(".anomaly") / "bench-explain"
    data = {
        "synthetic": (SYN_FEATURES, synthetic_normal(args.train_rows, seed=0)),
        "demo": (DEMO_FEATURES, generate_normal(args.train_rows, seed=0)),
    }
    planted = {
        "synthetic": synthetic_planted(synthetic_normal(5_000, seed=1), args.per_kind, seed=1),
        "demo": demo_planted(2_000, seed=2),
    }
    results = []
    for kind in args.kinds:
        for suite in args.suites:
            features, normal = data[suite]
            print(f"{suite}: fitting {kind}", flush=True)
            detector, metrics = fit(kind, features, normal, home)
            results += evaluate(suite, kind, detector, metrics, planted[suite], args.speed_rows)
            frame = pd.DataFrame(results)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(args.out, index=False)  # after every kind: partial runs keep results
    print(summary(frame))
    print(f"\nper sub-kind rows: {args.out}")


if __name__ == "__main__":
    main()
