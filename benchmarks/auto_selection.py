"""Which unlabelled rule picks the kind that ranks anomalies best? (evidence for ``auto``).

    python benchmarks/auto_selection.py [--datasets Pima,Cardiotocography] [--seed 0]
                                        [--kinds gaussian,gmm,kde,knn,flow] [--out FILE.csv]
                                        [--cache DIR]

Per ADBench dataset (``benchmarks/quality.py``'s split and standardisation, one seed): each kind
is fitted on 80 % of the training rows, as ``auto`` does, with the columns' lattice steps
(``anomaly.models.lattice_layout``), so discrete columns get probability mass and the kinds'
log-likelihoods are comparable. Printed per kind: the mean held-out log-likelihood on the other
20 % (nats per row) and the AUROC on the test rows (which no rule sees). Then the AUROC of what
each unlabelled rule yields:

- ``mean``: the kind with the best mean held-out log-likelihood;
- ``tail``: the kind with the best mean log-likelihood over the held-out rows that score lowest
  under the pooled candidates (the 10 % least typical rows: the region anomalies live in);
- ``stack``: the stacked mixture Σ_k w_k p_k with weights maximising the held-out likelihood
  (EM; Smyth & Wolpert 1999), a normalised density;
- ``product``: the geometric mixture Π_k p_k^(1/K) / Z, whose log is the average of the
  candidates' log-likelihoods (Z is one constant, so the ranking needs no Z);
- ``consensus``: the geometric mixture with weights ∝ 1 / (interquartile range of each kind's
  held-out log-likelihoods), which ranks as the mean of the standardised log-likelihoods;
- ``oracle``: the best kind by test AUROC (not a rule: the ceiling).

``--cache DIR`` keeps each kind's held-out, calibration and test log-likelihoods in
``DIR/<dataset>_<seed>_<kind>.npz`` and reuses them on the next run, so a new rule is measured
in seconds (the big datasets take minutes per kind on one thread).
"""

from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import numpy as np
import quality
import torch
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from anomaly.models import create, lattice_layout
from anomaly.models.auto import consensus_weights, stack_weights, tail_rows
from anomaly.models.base import Block


def log_probs(
    kind: str,
    seed: int,
    fit: np.ndarray,
    layout: list[Block],
    rows: dict[str, np.ndarray],
    path: Path | None,
) -> dict[str, np.ndarray]:
    """``kind`` fitted on ``fit``, its log-likelihoods of each part of ``rows`` (cached in
    ``path`` when given)."""
    if path is not None and path.is_file():
        with np.load(path) as saved:
            if set(rows) <= set(saved.files):
                return {part: saved[part] for part in rows}
    params = {"progress": False, "n_threads": 1} if kind in ("flow", "vae") else {}
    model = create(kind, seed=seed, **params).fit(fit, layout=layout)
    out = {part: model.log_prob(X) for part, X in rows.items()}
    if path is not None:
        np.savez(path, **out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="", help="comma list of name substrings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="gaussian,gmm,kde,knn,flow")
    parser.add_argument("--out", default="", help="also write one CSV row per dataset and kind")
    parser.add_argument("--cache", default="", help="folder for each kind's log-likelihoods")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    wanted = [s.strip().lower() for s in args.datasets.split(",") if s.strip()]
    files = sorted(quality.data_dir().glob("*.npz"), key=lambda f: f.stat().st_size)
    files = [
        f for f in files if not wanted or any(w in quality.dataset_name(f).lower() for w in wanted)
    ]
    rules = ("mean", "tail", "stack", "product", "consensus", "oracle")
    print("| dataset | " + " | ".join(kinds) + " | " + " | ".join(rules) + " |")
    print("|---|" + "---:|" * len(kinds) + "---|" * len(rules))
    picked: dict[str, list[float]] = {r: [] for r in rules}
    rows = []
    for path in files:
        name = quality.dataset_name(path)
        with np.load(path) as npz:
            parts = quality.split(npz["X"].astype(float), npz["y"].astype(int), args.seed)
        X = parts["train"]
        layout = lattice_layout(X)
        order = np.random.default_rng(args.seed).permutation(len(X))
        n_held = max(1, round(0.2 * len(X)))
        held, fit = X[order[:n_held]], X[order[n_held:]]
        held_lp, test_lp, auroc = {}, {}, {}
        if args.cache:
            Path(args.cache).mkdir(parents=True, exist_ok=True)
        for kind in kinds:
            path = Path(args.cache) / f"{name}_{args.seed}_{kind}.npz" if args.cache else None
            lp = log_probs(
                kind,
                args.seed,
                fit,
                layout,
                {"held": held, "cal": parts["cal"], "test": parts["test"]},
                path,
            )
            held_lp[kind], test_lp[kind] = lp["held"], lp["test"]
            auroc[kind] = roc_auc_score(parts["y_test"], -test_lp[kind])
        H = np.stack([held_lp[k] for k in kinds])
        tail = tail_rows(H)
        mean_pick = kinds[int(np.argmax(H.mean(axis=1)))]
        tail_pick = kinds[int(np.argmax(H[:, tail].mean(axis=1)))]
        w = stack_weights(H)
        T = np.stack([test_lp[k] for k in kinds])
        stacked = logsumexp(np.log(w)[:, None] + T, axis=0)
        result = {
            "mean": auroc[mean_pick],
            "tail": auroc[tail_pick],
            "stack": roc_auc_score(parts["y_test"], -stacked),
            "product": roc_auc_score(parts["y_test"], -T.mean(axis=0)),
            "consensus": roc_auc_score(parts["y_test"], -(consensus_weights(H) @ T)),
            "oracle": max(auroc.values()),
        }
        for rule in rules:
            picked[rule].append(result[rule])
        for kind, lp in held_lp.items():
            rows.append({"dataset": name, "kind": kind, "heldout": lp.mean(), "auroc": auroc[kind]})
        cells = " | ".join(f"{held_lp[k].mean():.2f} / {auroc[k]:.3f}" for k in kinds)
        weights = ", ".join(f"{k} {v:.2f}" for k, v in zip(kinds, w, strict=True) if v >= 0.01)
        print(
            f"| {name} | {cells} | {mean_pick} ({result['mean']:.3f}) "
            f"| {tail_pick} ({result['tail']:.3f}) | {result['stack']:.3f} ({weights}) "
            f"| {result['product']:.3f} | {result['consensus']:.3f} | {result['oracle']:.3f} |",
            flush=True,
        )
    means = " | ".join(f"**{np.mean(picked[r]):.3f}**" for r in rules)
    print(f"| **mean AUROC** |{' |' * len(kinds)} {means} |")
    if args.out:
        with open(args.out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["dataset", "kind", "heldout", "auroc"])
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
