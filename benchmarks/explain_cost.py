"""The fixed cost of explaining a batch's 1,000 worst rows, per kind (issue 18, item 4).

On the data of ``benchmarks/speed.py`` (20 numeric features; 20,000 training rows through the
preprocessor, default parameters, torch kinds trained for ``speed.TORCH_EPOCHS`` epochs): the
1,000 lowest-likelihood rows of 20,000 new ones are explained (``anomaly.explain.attribute``,
the kind's own method, and the generic search with ``--search``). Reported per kind: CPU
seconds of this process for the 1,000 rows, and the same cost in rows of raw ``log_prob``
scoring measured in the same process (load-independent: "explaining 1,000 rows costs as much
as scoring R rows"), and the wall seconds. Run with one thread::

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/explain_cost.py --kinds gaussian gmm kde knn

``--search`` times the generic search beside a kind's own method. ``--grid``/``--refine`` set
the search's candidates (quantiles, parabolic steps).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import speed

from anomaly import models
from anomaly.config import Features
from anomaly.explain import attribute
from anomaly.preprocessing import Preprocessor


def cpu(fn: object) -> float:
    """CPU seconds of this process spent in ``fn()``."""
    return timed(fn)[0]


def timed(fn: object) -> tuple[float, float]:
    """CPU and wall seconds of this process spent in ``fn()``."""
    start, wall = time.process_time(), time.perf_counter()
    fn()  # type: ignore[operator]
    return time.process_time() - start, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["gaussian", "gmm", "kde", "knn"])
    parser.add_argument("--search", action="store_true", help="also time the generic search")
    parser.add_argument("--grid", type=int, default=6, help="the search's quantiles")
    parser.add_argument("--refine", type=int, default=3, help="the search's parabolic steps")
    args = parser.parse_args()
    features = Features(id="id", numeric=[f"f{j}" for j in range(speed.N_FEATURES)])
    train = speed.synthetic(speed.N_TRAIN, seed=1)
    pre = Preprocessor(features).fit(train)
    X = pre.transform(train).X
    new = pre.transform(speed.synthetic(20_000, seed=7)).X
    print("| kind | method | CPU s / 1,000 rows | = rows of raw scoring | wall s |")
    print("|---|---|---:|---:|---:|")
    for kind in args.kinds:
        model = models.create(kind, seed=0, **speed._model_params(kind, 1))
        model.fit(X, layout=pre.layout_)
        scores = model.log_prob(new)
        worst = new[np.argsort(scores)[:1_000]]
        raw_rows_s = len(new) / cpu(lambda model=model: model.log_prob(new))
        own = model.explanation_for(pre.layout_)
        for method in [own, "replacement"] if args.search and own != "replacement" else [own]:
            seconds, wall = timed(
                lambda m=model, w=worst, method=method: attribute(
                    m, w, pre.layout_, method, grid=args.grid, refine=args.refine
                )
            )
            print(
                f"| {kind} | {method} | {seconds:.2f} | {seconds * raw_rows_s:,.0f} | {wall:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
