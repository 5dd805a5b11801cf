"""Conformal calibration: turn anomaly scores into p-values and flags.

Sign convention: ``score = -log_likelihood``, so **higher = more anomalous**.

A :class:`Calibrator` is fitted on the scores of held-out normal rows that the density model
never saw. For a new score ``s`` the conformal p-value is

    p(s) = (1 + #{calibration scores >= s}) / (n_cal + 1),

which is valid (P[p <= a] <= a for a normal row exchangeable with the calibration rows) without
any assumption on the score distribution. Flagging then follows a chosen rule:

* ``"fpr"``: flag ``p <= alpha``; the false-positive rate on normal rows is at most ``alpha``.
* ``"fdr"``: Benjamini–Hochberg at level ``alpha`` over each batch; conformal p-values are
  PRDS (Bates et al., 2023), so the false discovery rate is at most ``alpha``.

Saved form (no pickle): ``calibration.json`` (parameters, n_cal, threshold) plus
``calibration.npz`` (the sorted scores, loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import json
import math
import operator
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from scipy.special import betaln

Rule = Literal["fpr", "fdr"]
RULES: tuple[str, ...] = get_args(Rule)
FORMAT_VERSION = 1
JSON_NAME = "calibration.json"
NPZ_NAME = "calibration.npz"


@dataclass(frozen=True)
class ShiftCheck:
    """Result of :meth:`Calibrator.shift_alarm`."""

    flag_rate: float
    expected_rate: float
    p_value: float
    alarm: bool


class Calibrator:
    """Conformal p-values, flags and a distribution-shift alarm from calibration scores."""

    def __init__(
        self, *, rule: Rule = "fpr", alpha: float = 0.01, shift_pvalue: float = 0.001
    ) -> None:
        self.rule = rule
        self.alpha = alpha
        self.shift_pvalue = shift_pvalue

    # ------------------------------------------------------------------ fitting
    def fit(self, scores: np.ndarray) -> Calibrator:
        """Store the sorted calibration scores (of held-out normal rows) and return ``self``."""
        self._check_params()
        cal = np.asarray(scores, dtype=np.float64)
        if cal.ndim != 1:
            msg = f"calibration scores must be a 1-D array, got shape {cal.shape}; flatten them"
            raise ValueError(msg)
        if cal.size == 0:
            msg = "calibration scores are empty: pass the scores of at least 1 held-out normal row"
            raise ValueError(msg)
        if not np.isfinite(cal).all():
            bad = int((~np.isfinite(cal)).sum())
            msg = (
                f"{bad} of {cal.size} calibration scores are NaN or inf; "
                "drop or fix those rows before calibrating"
            )
            raise ValueError(msg)
        n = cal.size
        if 1.0 / (n + 1) > self.alpha:
            msg = (
                f"with {n} calibration rows the smallest possible p-value is 1/{n + 1} "
                f"> alpha={self.alpha}, so nothing can ever be flagged; use at least "
                f"{_rows_needed(self.alpha)} calibration rows"
            )
            warnings.warn(msg, UserWarning, stacklevel=2)
        self.scores_ = np.sort(cal)
        self.n_cal_ = n
        self.threshold_ = self._fpr_threshold()
        return self

    def _fpr_threshold(self) -> float:
        """Smallest score whose p-value is <= alpha (+inf if none).

        p(s) only drops just *above* a calibration score, so the threshold is the next float
        after one; ``scores >= threshold_`` then equals ``p_values(scores) <= alpha`` exactly.
        """
        n = self.n_cal_
        # Same float expression as p_values(): p for k calibration scores >= s.
        p_by_count = (np.arange(n + 1, dtype=np.float64) + 1.0) / (n + 1)
        max_count = int(np.count_nonzero(p_by_count <= self.alpha)) - 1
        if max_count < 0:
            return math.inf
        # Flagged iff #{cal >= s} <= max_count iff s > the (max_count + 1)-th largest score.
        return float(np.nextafter(self.scores_[n - max_count - 1], np.inf))

    # ------------------------------------------------------------------ scoring
    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values in (0, 1] for scores of any shape (ties count as extreme)."""
        self._check_fitted()
        s = np.asarray(scores, dtype=np.float64)
        if np.isnan(s).any():
            bad = int(np.isnan(s).sum())
            msg = f"{bad} of {s.size} scores are NaN; score only clean rows (inf is allowed)"
            raise ValueError(msg)
        n = self.n_cal_
        # index of the first calibration score >= s, so n - idx counts scores >= s
        p = np.searchsorted(self.scores_, s, side="left").astype(np.float64)
        np.subtract(n + 1, p, out=p)
        p /= n + 1
        return p

    def flag(self, p_values: np.ndarray) -> np.ndarray:
        """Boolean flags (same shape) under the rule; ``fdr`` treats the input as one batch."""
        self._check_fitted()
        p = np.asarray(p_values, dtype=np.float64)
        if np.isnan(p).any():
            msg = f"{int(np.isnan(p).sum())} of {p.size} p-values are NaN; pass p_values() output"
            raise ValueError(msg)
        if p.size and not (p.min() >= 0 and p.max() <= 1):
            msg = f"p-values must lie in [0, 1], got min={float(p.min())}, max={float(p.max())}"
            raise ValueError(msg)
        if self.rule == "fpr":
            return p <= self.alpha
        return benjamini_hochberg(p.ravel(), self.alpha).reshape(p.shape)

    def shift_alarm(self, n_flagged: int, n_rows: int) -> ShiftCheck:
        """One-sided test: is the batch's flag rate improbably high for normal data?

        All rows of a batch share one calibration set, so given it the realised false-positive
        rate of the ``fpr`` rule is Beta(a, n_cal + 1 - a) distributed with
        a = floor(alpha (n_cal + 1)) (Vovk 2012, "Conditional validity of inductive conformal
        predictors"), and the flag count of a normal batch is beta-binomial, not binomial. The
        p-value is P(K ≥ n_flagged) under that law; a plain binomial test would raise false
        alarms on large batches from the calibration set's own scatter. Every row BH flags has
        ``p <= alpha`` too, so under ``fdr`` the same test is a conservative alarm.
        """
        self._check_fitted()
        k, n = operator.index(n_flagged), operator.index(n_rows)
        if n < 0 or not 0 <= k <= n:
            msg = f"need 0 <= n_flagged <= n_rows, got n_flagged={k}, n_rows={n}"
            raise ValueError(msg)
        if n == 0:
            return ShiftCheck(0.0, float(self.alpha), 1.0, False)
        a = math.floor(self.alpha * (self.n_cal_ + 1))
        if k == 0:  # P(K ≥ 0)
            p_value = 1.0
        elif a == 0:  # the rule cannot flag normal rows at all
            p_value = 0.0
        else:
            p_value = beta_binomial_sf(k - 1, n, a, self.n_cal_ + 1 - a)
        return ShiftCheck(k / n, float(self.alpha), p_value, p_value < self.shift_pvalue)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Constructor parameters as JSON-serialisable values."""
        return {
            "rule": str(self.rule),
            "alpha": float(self.alpha),
            "shift_pvalue": float(self.shift_pvalue),
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``calibration.json`` and ``calibration.npz`` to ``directory`` (created)."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "params": self.to_dict(),
            "n_cal": self.n_cal_,
            # strict JSON has no Infinity: null means "unreachable"
            "threshold": self.threshold_ if math.isfinite(self.threshold_) else None,
        }
        (directory / JSON_NAME).write_text(json.dumps(meta, indent=2, allow_nan=False))
        np.savez(directory / NPZ_NAME, scores=self.scores_)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Calibrator:
        """Read a calibrator written by :meth:`save` (no pickle)."""
        directory = Path(directory)
        meta = json.loads((directory / JSON_NAME).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            msg = (
                f"{directory / JSON_NAME}: format_version {meta.get('format_version')!r} is not "
                f"supported (expected {FORMAT_VERSION}); re-run calibration"
            )
            raise ValueError(msg)
        with np.load(directory / NPZ_NAME, allow_pickle=False) as data:
            scores = data["scores"]
        calibrator = cls(**meta["params"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # already warned at fit time
            calibrator.fit(scores)
        if calibrator.n_cal_ != meta["n_cal"]:
            msg = (
                f"{directory}: calibration.json says n_cal={meta['n_cal']} but calibration.npz "
                f"holds {calibrator.n_cal_} scores; the files are mismatched, re-run calibration"
            )
            raise ValueError(msg)
        return calibrator

    # ------------------------------------------------------------------ helpers
    def _check_params(self) -> None:
        if self.rule not in RULES:
            msg = f"rule must be one of {RULES}, got {self.rule!r}"
            raise ValueError(msg)
        for name in ("alpha", "shift_pvalue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
                msg = f"{name} must be a number in (0, 1), got {value!r}"
                raise ValueError(msg)
            if not 0 < value < 1:
                msg = f"{name} must be in (0, 1) (exclusive), got {value!r}; e.g. 0.01"
                raise ValueError(msg)

    def _check_fitted(self) -> None:
        if not hasattr(self, "scores_"):
            from sklearn.exceptions import NotFittedError

            msg = "this Calibrator is not fitted yet: call fit(calibration_scores) first"
            raise NotFittedError(msg)


def beta_binomial_sf(k: int, n: int, a: float, b: float) -> float:
    """P(K > k) for K ~ BetaBinomial(n, a, b), 0 ≤ k < n, computed as
    ``scipy.stats.betabinom.sf`` computes it (one minus the pmf summed up to k; the same
    numbers), without importing scipy.stats: that costs a command half a second (issue 14)."""
    m = np.arange(k + 1, dtype=np.float64)
    log_choose = -np.log(n + 1) - betaln(n - m + 1, m + 1)
    log_pmf = log_choose + betaln(m + a, n - m + b) - betaln(a, b)
    return float(np.clip(1.0 - np.sum(np.exp(log_pmf), axis=0), 0.0, 1.0))


def benjamini_hochberg(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Benjamini–Hochberg step-up: reject the k smallest p, k = max{i : p_(i) <= alpha·i/m}."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    flags = np.zeros(m, dtype=bool)
    if m == 0:
        return flags
    order = np.argsort(p, kind="stable")
    below = p[order] <= alpha * np.arange(1, m + 1) / m
    if below.any():
        k = int(np.flatnonzero(below)[-1]) + 1
        flags[order[:k]] = True
    return flags


def _rows_needed(alpha: float) -> int:
    """Smallest n with 1/(n + 1) <= alpha."""
    n = max(math.ceil(1.0 / alpha) - 2, 1)  # float-safe start just below the answer
    while 1.0 / (n + 1) > alpha:
        n += 1
    return n
