"""Write the saved ``independent`` and ``autoregressive`` models of the format before issue 18
(item 6), with inputs and the log-densities that code gave them (``expected.npz``).

Run once with the old code (commit d5708cf) on PYTHONPATH; ``tests/test_fast_scoring.py`` loads
these with the current code and checks the values:

    PYTHONPATH=<old tree> python tests/data/old_models/make_old_models.py
"""

from pathlib import Path

import numpy as np

from anomaly import models
from anomaly.models.base import Block

HERE = Path(__file__).resolve().parent
LAYOUT = [
    Block("x", 0, 1),
    Block("amount", 1, 2),
    Block("count", 2, 3, step=1.0),
    Block("colour", 3, 6, categorical=True),
]


def draw(n: int, rng: np.random.Generator) -> np.ndarray:
    """x | c normal, a log-normal amount, a Poisson count, c one of three colours."""
    c = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    x = rng.normal(np.array([-2.0, 0.0, 3.0])[c], 0.7)
    amount = np.exp(rng.normal(3.0, 1.0, n))
    count = rng.poisson(3.0 + c, n).astype(float)
    return np.column_stack([x, amount, count, np.eye(3)[c]])


def main() -> None:
    rng = np.random.default_rng(7)
    X = draw(2_000, rng)
    test = draw(500, rng)
    test[:20, 0] *= 6  # far tails
    test[20:30, 1] = 1e5
    test[30:35, 3:] = 0.0  # an unseen category
    context = rng.normal(size=(2_000, 1))
    test_context = rng.normal(size=(500, 1))
    torch = {"max_epochs": 5, "progress": False, "n_threads": 1}
    fitted = {
        "independent": models.create("independent", bins=256).fit(X, layout=LAYOUT),
        "autoregressive": models.create(
            "autoregressive", hidden=(32, 32), components=4, orders=3, **torch
        ).fit(X, layout=LAYOUT, context=context),
    }
    expected = {"X": test, "context": test_context}
    for kind, model in fitted.items():
        model.save(HERE / kind)
        ctx = test_context if kind == "autoregressive" else None
        expected[f"{kind}_log_prob"] = model.log_prob(test, ctx)
        expected[f"{kind}_feature_log_probs"] = model.feature_log_probs(test, ctx)
        _, best, modes = model.conditional_modes(test, ctx)
        expected[f"{kind}_best"], expected[f"{kind}_modes"] = best, modes
    np.savez(HERE / "expected.npz", **expected)


if __name__ == "__main__":
    main()
