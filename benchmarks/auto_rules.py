"""Label-free ways to combine ``auto``'s candidates, measured against the peers (seed by seed).

    python benchmarks/auto_selection.py --seed 0 --cache CACHE     # fits the kinds once
    python benchmarks/auto_rules.py --cache CACHE [--seeds 0] [--datasets a,b]

Reads the held-out and test log-likelihoods that ``auto_selection.py --cache`` wrote (each kind
fitted on 80 % of the training rows, as ``auto`` does) and the peers' AUROCs in
``benchmarks/results/quality_peers.csv`` (same splits). For every set of candidates and every
rule it prints the mean AUROC over the datasets (each the mean over the seeds), the mean rank
among the peers and that rule alone, and the worst deficit against the best peer. The rules
(higher = more normal; none sees a label):

- ``select``: the kind with the best mean held-out log-likelihood (``auto``'s ``mean`` rule);
- ``stack``: the stacked mixture with held-out-optimal weights (``rule="stack"``);
- ``product``: the mean of the log-likelihoods (``rule="product"``);
- ``consensus``: the mean of the log-likelihoods standardised by their held-out median and
  interquartile range (ranks as ``rule="consensus"``);
- ``min``: the least normal of the standardised log-likelihoods (maximum-score ensemble);
- ``rank``: the mean of each kind's held-out ECDF value (a conformal p-value);
- ``fisher``: the mean log of those p-values (Fisher's combination).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import quality
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from anomaly.models.auto import consensus_weights, stack_weights

REPO = Path(__file__).resolve().parent.parent
RULES = ("select", "stack", "product", "consensus", "min", "rank", "fisher")


def standardised(held: np.ndarray, test: np.ndarray) -> np.ndarray:
    q1, q2, q3 = np.percentile(held, [25, 50, 75])
    return (test - q2) / max(q3 - q1, 1e-12)


def p_value(held: np.ndarray, test: np.ndarray) -> np.ndarray:
    """(1 + #held-out rows at most as likely) / (n + 1): small = unusual."""
    return (1 + np.searchsorted(np.sort(held), test, side="right")) / (len(held) + 1)


def combine(held: dict[str, np.ndarray], test: dict[str, np.ndarray], rule: str) -> np.ndarray:
    kinds = list(held)
    H, T = np.stack([held[k] for k in kinds]), np.stack([test[k] for k in kinds])
    if rule == "select":
        return T[int(np.argmax(H.mean(axis=1)))]
    if rule == "stack":
        return logsumexp(np.log(np.maximum(stack_weights(H), 1e-300))[:, None] + T, axis=0)
    if rule == "product":
        return T.mean(axis=0)
    if rule == "consensus":
        return consensus_weights(H) @ T
    if rule == "min":
        return np.min([standardised(held[k], test[k]) for k in kinds], axis=0)
    p = np.stack([p_value(held[k], test[k]) for k in kinds])
    return p.mean(axis=0) if rule == "rank" else np.log(p).mean(axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--datasets", default="", help="comma list (default: every complete one)")
    parser.add_argument("--kinds", default="gaussian,gmm,kde,knn,flow")
    parser.add_argument("--peers", default=str(REPO / "benchmarks/results/quality_peers.csv"))
    args = parser.parse_args()
    cache, seeds = Path(args.cache), [int(s) for s in args.seeds.split(",")]
    kinds = args.kinds.split(",")
    peers = pd.read_csv(args.peers)
    peers = peers[peers["seed"].isin(seeds)]
    peer_auroc = peers.pivot_table(index="dataset", columns="detector", values="auroc")
    names = args.datasets.split(",") if args.datasets else list(dict.fromkeys(peers["dataset"]))
    data = {}
    for name in names:
        parts = [cache / f"{name}_{s}_{k}.npz" for s in seeds for k in kinds]
        if all(p.is_file() for p in parts):
            data[name] = {
                s: {k: dict(np.load(cache / f"{name}_{s}_{k}.npz")) for k in kinds} for s in seeds
            }
    names = list(data)
    y = {}
    for name in names:  # the test labels, from the split benchmarks/quality.py makes
        path = next(f for f in quality.data_dir().glob("*.npz") if quality.dataset_name(f) == name)
        with np.load(path) as npz:
            for s in seeds:
                y[name, s] = quality.split(npz["X"].astype(float), npz["y"].astype(int), s)[
                    "y_test"
                ]
    sets = [c for n in range(1, len(kinds) + 1) for c in itertools.combinations(kinds, n)]
    rows = []
    P = peer_auroc.reindex(names)
    for members in sets:
        for rule in RULES if len(members) > 1 else ("select",):
            auroc = pd.Series(
                {
                    n: np.mean(
                        [
                            roc_auc_score(
                                y[n, s],
                                -combine(
                                    {k: data[n][s][k]["held"] for k in members},
                                    {k: data[n][s][k]["test"] for k in members},
                                    rule,
                                ),
                            )
                            for s in seeds
                        ]
                    )
                    for n in names
                }
            )
            deficit = P.max(axis=1) - auroc
            rank = pd.concat([P, auroc.rename("rule")], axis=1).rank(axis=1, ascending=False)
            rows.append(
                {
                    "candidates": " + ".join(members),
                    "rule": rule,
                    "mean AUROC": auroc.mean(),
                    "mean rank": rank["rule"].mean(),
                    "worst deficit": f"{deficit.max():.3f} ({deficit.idxmax()})",
                    "datasets > 3 points behind": int((deficit > 0.03).sum()),
                }
            )
    out = pd.DataFrame(rows).sort_values("mean AUROC", ascending=False)
    best = P.mean().sort_values().index[-1]
    print(f"{len(names)} datasets, seeds {seeds}; best peer {best} {P[best].mean():.3f}")
    print("| " + " | ".join(out.columns) + " |")
    print("|---|---|" + "---:|" * (len(out.columns) - 2))
    for row in out.itertuples(index=False):
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
