"""Does held-out likelihood pick the kind that ranks anomalies best? (evidence for ``auto``).

    python benchmarks/auto_selection.py [--datasets Pima,Cardiotocography] [--seed 0]
                                        [--kinds gaussian,gmm,kde,knn,flow]

Per ADBench dataset (``benchmarks/quality.py``'s split and standardisation, one seed): each kind
is fitted on 80 % of the training rows, as ``auto`` does; the table gives its mean held-out
log-likelihood on the other 20 % (nats per row, what ``auto`` selects by) and its AUROC on the
test rows (which ``auto`` never sees), then the kind the likelihood picks among all kinds and
among the kernel kinds (``kde``, ``knn``: ``auto``'s default candidates).
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import quality
import torch
from sklearn.metrics import roc_auc_score

from anomaly.models import create

KERNEL_KINDS = ("kde", "knn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="", help="comma list of name substrings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="gaussian,gmm,kde,knn,flow")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    wanted = [s.strip().lower() for s in args.datasets.split(",") if s.strip()]
    files = sorted(quality.data_dir().glob("*.npz"), key=lambda f: f.stat().st_size)
    files = [
        f for f in files if not wanted or any(w in quality.dataset_name(f).lower() for w in wanted)
    ]
    print("| dataset | " + " | ".join(kinds) + " | pick of all | pick of kde, knn |")
    print("|---|" + "---:|" * len(kinds) + "---|---|")
    picked_all, picked_kernel = [], []
    for path in files:
        with np.load(path) as npz:
            parts = quality.split(npz["X"].astype(float), npz["y"].astype(int), args.seed)
        X = parts["train"]
        order = np.random.default_rng(args.seed).permutation(len(X))
        n_held = max(1, round(0.2 * len(X)))
        held, fit = X[order[:n_held]], X[order[n_held:]]
        loglik, auroc = {}, {}
        for kind in kinds:
            params = {"progress": False, "n_threads": 1} if kind in ("flow", "vae") else {}
            model = create(kind, seed=args.seed, **params).fit(fit)
            loglik[kind] = float(model.log_prob(held).mean())
            auroc[kind] = roc_auc_score(parts["y_test"], -model.log_prob(parts["test"]))
        best = max(kinds, key=loglik.__getitem__)
        kernel = max([k for k in KERNEL_KINDS if k in kinds], key=loglik.__getitem__)
        picked_all.append(auroc[best])
        picked_kernel.append(auroc[kernel])
        cells = " | ".join(f"{loglik[k]:.2f} / {auroc[k]:.3f}" for k in kinds)
        print(
            f"| {quality.dataset_name(path)} | {cells} | {best} ({auroc[best]:.3f}) "
            f"| {kernel} ({auroc[kernel]:.3f}) |",
            flush=True,
        )
    print(
        f"| **mean AUROC of the pick** |{' |' * len(kinds)} **{np.mean(picked_all):.3f}** "
        f"| **{np.mean(picked_kernel):.3f}** |"
    )


if __name__ == "__main__":
    main()
