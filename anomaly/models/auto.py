"""``auto``: fit several kinds and keep the one with the best held-out log-likelihood."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from anomaly.models.base import DensityModel

logger = logging.getLogger(__name__)


class Auto(DensityModel):
    """Model selection by held-out likelihood (nats per record), no labels needed.

    Each kind in ``candidates`` is fitted on ``1 - heldout_fraction`` of the rows and scored on
    the rest; the winner is refitted on all rows. ``candidate_params`` maps a kind to its
    constructor arguments. The scores of all candidates are kept in ``scores_``.

    The default candidates are the two kernel estimators (fixed and k-NN bandwidths): nearest-
    neighbour scores rank anomalies best in published train-on-normal results (ADBench, 57
    datasets), and parametric or neural kinds can win held-out likelihood by piling mass on
    repeated values (codes, counts) without ranking anomalies better (Nalisnick et al. 2019).
    See docs/benchmarks.md for the measurements.
    """

    kind = "auto"

    def __init__(
        self,
        seed: int = 0,
        candidates: tuple[str, ...] = ("kde", "knn"),
        candidate_params: dict[str, dict[str, Any]] | None = None,
        heldout_fraction: float = 0.2,
    ) -> None:
        super().__init__(seed)
        self.candidates = candidates
        self.candidate_params = candidate_params
        self.heldout_fraction = heldout_fraction

    def _make(self, kind: str) -> DensityModel:
        from anomaly.models import create

        return create(kind, seed=self.seed, **(self.candidate_params or {}).get(kind, {}))

    def _fit(self, X: np.ndarray) -> None:
        if not self.candidates or "auto" in self.candidates:
            msg = f"auto: candidates must be a non-empty list of other kinds, got {self.candidates}"
            raise ValueError(msg)
        order = np.random.default_rng(self.seed).permutation(X.shape[0])
        n_held = max(1, round(self.heldout_fraction * X.shape[0]))
        held, fit_part = X[order[:n_held]], X[order[n_held:]]
        self.scores_: dict[str, float] = {}
        for kind in self.candidates:
            model = self._make(kind).fit(fit_part, layout=self.layout_)
            self.scores_[kind] = float(model.log_prob(held).mean())
            logger.info("auto: %s held-out log-likelihood %.4f", kind, self.scores_[kind])
        self.chosen_ = max(self.scores_, key=self.scores_.__getitem__)
        self.model_ = self._make(self.chosen_).fit(X, layout=self.layout_)

    @property
    def selection_(self) -> dict[str, Any]:
        """What ``fit`` chose: ``{"chosen": kind, "heldout_log_likelihood": {kind: mean}}``
        (every candidate's mean held-out log-likelihood, nats per record in the model's space)."""
        return {"chosen": self.chosen_, "heldout_log_likelihood": dict(self.scores_)}

    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        return self.model_.log_prob(X)

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.model_.sample(n, seed=int(rng.integers(2**31)))

    def _fitted_json(self) -> dict[str, Any]:
        return {"chosen": self.chosen_, "scores": self.scores_}

    def _save_weights(self, directory: Path) -> None:
        self.model_.save(directory / "chosen")

    def _load_weights(self, directory: Path, fitted: dict[str, Any]) -> None:
        from anomaly.models import load

        self.model_ = load(directory / "chosen")
        self.chosen_, self.scores_ = fitted["chosen"], fitted["scores"]
