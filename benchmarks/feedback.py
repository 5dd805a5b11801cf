"""Learning from reviews, simulated: do reviewed false positives stop coming back?

    python benchmarks/feedback.py [--kind knn] [--rounds 5] [--review 50] [--weight 1]
                                  [--dataset Cardiotocography] [--out FILE.csv]

The loop of a deployment: score a batch, an analyst reviews the ``--review`` most anomalous
flagged rows (the ground truth plays the analyst), the detector learns, the next batch is
scored. Three detectors see the same batches: ``static`` never learns; ``refit`` retrains after
every round on its training rows plus every row reviewed so far as normal (a false positive),
each repeated ``--weight`` times; ``component`` keeps its model and adds a reviewed-normal
component to the density, p'(x) = (1 − ε) p(x) + ε q(x), with q a ``kde`` of the rows reviewed
as normal and ε their share of all training rows: the density changes near the reviewed rows
only (elsewhere by the constant log(1 − ε), which the calibration absorbs). Confirmed
anomalies are kept out of the training rows, as they always were.

Each batch holds normal rows, planted anomalies and a **recurring normal pattern** the training
rows never showed: on the demo data, a haulier's drivers filling up on the road (fuel, chip,
about 120, 300–600 km from home, daytime; the demo's fuel purchases are near home and no
planted anomaly looks like this); on an ADBench dataset,
the normals of one k-means cluster (of 8) held out of training. Per batch and detector: flagged
rows, precision, recall of the planted anomalies, false positives and the false positives that
are the recurring pattern. Flags: the conformal ``fpr`` rule at α = 1 % on calibration rows
(normal rows kept out of training, refitted with every retrain).
"""

from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import quality
import torch
from sklearn.cluster import KMeans

from anomaly import models
from anomaly.calibration import Calibrator
from anomaly.config import Features
from anomaly.demo_data import CATEGORICAL, ID, NUMERIC, generate_normal, plant_anomalies
from anomaly.preprocessing import Preprocessor

ALPHA = 0.01
PATTERN = "pattern"  # label of the recurring normal pattern's rows


# ---------------------------------------------------------------------------------- data
def demo_batches(rounds: int, batch_rows: int, pattern_rows: int) -> tuple[pd.DataFrame, list]:
    """Training rows, and per round a (batch, truth) pair; truth is "normal"/"anomaly"/PATTERN."""
    train = generate_normal(20_000, seed=0)
    batches = []
    for r in range(1, rounds + 1):
        frame, labels = plant_anomalies(generate_normal(batch_rows, seed=100 + r), 0.02, 100 + r)
        rng = np.random.default_rng(r)
        sub = frame.sample(pattern_rows, random_state=r).copy()
        sub[ID] = [f"sub-{r}-{i}" for i in range(pattern_rows)]
        sub["merchant_category"], sub["channel"] = "fuel", "chip"
        sub["amount"] = np.exp(rng.normal(np.log(120.0), 0.2, pattern_rows)).round(2)
        sub["distance_km"] = rng.uniform(300.0, 600.0, pattern_rows).round(3)
        sub["hour"] = rng.uniform(6.0, 20.0, pattern_rows)
        truth = np.where(labels["is_anomaly"], "anomaly", "normal")
        batch = pd.concat([frame, sub], ignore_index=True)
        batches.append((batch, np.concatenate([truth, [PATTERN] * pattern_rows])))
    return train, batches


def adbench_batches(name: str, rounds: int, seed: int = 0) -> tuple[pd.DataFrame, list, list[str]]:
    """A dataset as a table: training normals without one cluster; batches of the rest."""
    path = next(f for f in quality.data_dir().glob("*.npz") if quality.dataset_name(f) == name)
    with np.load(path) as npz:
        X, y = npz["X"].astype(float), npz["y"].astype(int)
    keep = X.std(axis=0) > 0
    X = X[:, keep]
    cols = [f"x{j}" for j in range(X.shape[1])]
    rng = np.random.default_rng(seed)
    normal, anomaly = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    z = (X - X[normal].mean(0)) / X[normal].std(0).clip(1e-12)
    clusters = KMeans(8, random_state=seed, n_init=4).fit_predict(z[normal])
    # the recurring pattern: the smallest cluster holding at least 5 % of the normals
    sizes = np.bincount(clusters, minlength=8)
    ok = np.flatnonzero(sizes >= 0.05 * len(normal))
    held = ok[np.argmin(sizes[ok])]
    pattern = rng.permutation(normal[clusters == held])
    rest = rng.permutation(normal[clusters != held])
    n_train = len(rest) // 2
    frame = pd.DataFrame(X, columns=cols)
    frame.insert(0, "id", [f"r{i}" for i in range(len(frame))])
    train = frame.iloc[rest[:n_train]]
    batch_normals = np.array_split(rest[n_train:], rounds)
    batch_pattern = np.array_split(pattern, rounds)
    batch_anomaly = np.array_split(rng.permutation(anomaly), rounds)
    batches = []
    for normals, pat, anom in zip(batch_normals, batch_pattern, batch_anomaly, strict=True):
        rows = np.concatenate([normals, pat, anom])
        truth = ["normal"] * len(normals) + [PATTERN] * len(pat) + ["anomaly"] * len(anom)
        batches.append((frame.iloc[rows].reset_index(drop=True), np.array(truth)))
    return train, batches, cols


# ---------------------------------------------------------------------------------- detector
class Detector:
    """Preprocessor → density model → conformal calibrator, refitted on demand."""

    def __init__(self, features: Features, kind: str, train: pd.DataFrame) -> None:
        self.features, self.kind = features, kind
        order = np.random.default_rng(0).permutation(len(train))
        n_cal = len(train) // 5
        self.calibration = train.iloc[order[:n_cal]]
        self.train = train.iloc[order[n_cal:]]
        self.fit(self.train)

    def add_component(self, reviewed: pd.DataFrame) -> None:
        """Mix a ``kde`` of the rows reviewed as normal into the density (weight: their share)."""
        X = self.pre.transform(reviewed).X
        if len(X) < 2:
            return
        self.extra = models.create("kde", seed=0).fit(X, layout=self.pre.layout_)
        self.share = len(X) / (len(X) + len(self.train))
        self.calibrator = Calibrator(rule="fpr", alpha=ALPHA).fit(-self._ll(self.calibration))

    def fit(self, rows: pd.DataFrame) -> None:
        self.pre = Preprocessor(self.features).fit(rows)
        prepared = self.pre.transform(rows)
        params = {"progress": False} if self.kind in ("flow", "vae", "autoregressive") else {}
        self.model = models.create(self.kind, seed=0, **params)
        self.model.fit(prepared.X, layout=self.pre.layout_)
        self.calibrator = Calibrator(rule="fpr", alpha=ALPHA).fit(-self._ll(self.calibration))

    def _ll(self, df: pd.DataFrame) -> np.ndarray:
        prepared = self.pre.transform(df)
        assert prepared.quarantined.empty, prepared.quarantined[:3]
        lp = self.model.log_prob(prepared.X)
        if getattr(self, "extra", None) is not None:
            lp = np.logaddexp(
                np.log1p(-self.share) + lp, np.log(self.share) + self.extra.log_prob(prepared.X)
            )
        return lp + prepared.log_det

    def score(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        ll = self._ll(df)
        return ll, self.calibrator.flag(self.calibrator.p_values(-ll))


def run(
    name: str, features: Features, train: pd.DataFrame, batches: list, args: argparse.Namespace
) -> list[dict]:
    detectors = {
        name: Detector(features, args.kind, train) for name in ("static", "refit", "component")
    }
    reviewed: dict[str, list[pd.DataFrame]] = {"refit": [], "component": []}
    rows = []
    for r, (batch, truth) in enumerate(batches, start=1):
        for label, det in detectors.items():
            ll, flagged = det.score(batch)
            anomalous = truth == "anomaly"
            fp = flagged & ~anomalous
            rows.append(
                {
                    "data": name,
                    "kind": args.kind,
                    "round": r,
                    "detector": label,
                    "flagged": int(flagged.sum()),
                    "precision": float((flagged & anomalous).sum() / max(flagged.sum(), 1)),
                    "recall": float((flagged & anomalous).sum() / max(anomalous.sum(), 1)),
                    "false_positives": int(fp.sum()),
                    "pattern_fp": int((flagged & (truth == PATTERN)).sum()),
                    "pattern_rows": int((truth == PATTERN).sum()),
                }
            )
            print(rows[-1], flush=True)
            if label == "static" or r == len(batches):
                continue
            # the analyst reviews the most anomalous flagged rows; the normal ones are kept
            top = np.flatnonzero(flagged)[np.argsort(ll[flagged])][: args.review]
            reviewed[label].append(batch.iloc[top[truth[top] != "anomaly"]])
            seen = pd.concat(reviewed[label], ignore_index=True)
            seen = seen.assign(**{features.id: [f"rev{i}" for i in range(len(seen))]})
            if label == "component":
                det.add_component(seen)
            elif len(seen):
                extra = pd.concat([seen] * args.weight, ignore_index=True)
                extra[features.id] = [f"rev{i}" for i in range(len(extra))]
                det.fit(pd.concat([det.train, extra], ignore_index=True))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="knn")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--review", type=int, default=50, help="rows an analyst reviews a batch")
    parser.add_argument("--weight", type=int, default=1, help="copies of a reviewed row (refit)")
    parser.add_argument("--dataset", default="Cardiotocography", help="ADBench dataset ('' none)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    rows = []
    train, batches = demo_batches(args.rounds, batch_rows=5_000, pattern_rows=60)
    demo = Features(id=ID, numeric=NUMERIC, categorical=CATEGORICAL)
    rows += run("demo", demo, train, batches, args)
    if args.dataset:
        train, batches, cols = adbench_batches(args.dataset, args.rounds)
        rows += run(args.dataset, Features(id="id", numeric=cols), train, batches, args)
    table = pd.DataFrame(rows)
    print()
    print(
        "| data | round | detector | flagged | precision | recall | false positives "
        "| of them the pattern |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for _, t in table.iterrows():
        print(
            f"| {t['data']} | {t['round']} | {t['detector']} | {t['flagged']} | "
            f"{t['precision']:.3f} | {t['recall']:.3f} | {t['false_positives']} | "
            f"{t['pattern_fp']} / {t['pattern_rows']} |"
        )
    if args.out:
        with Path(args.out).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
