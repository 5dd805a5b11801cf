"""The density-model contract shared by every kind.

Every model estimates a probability density p(x) on real-valued rows by maximum likelihood.
``log_prob(X)`` returns the natural-log density per row (higher = more normal), float64, finite.
The base class owns validation, seeding, threads and save/load; subclasses fill small hooks:
``_fit``, ``_log_prob``, ``_sample`` (abstract: a kind without them cannot be instantiated) and
``_state``/``_load_state``; for explanations, a kind with closed-form conditionals names its
``explanation`` and fills the hook that computes it (the others get the generic search,
``anomaly/models/replacement.py``). A kind declares what each constructor parameter may be in
its ``parameter_constraints`` table (:mod:`anomaly.models.constraints`), checked once by
``fit``; a kind missing a constraint, its storage hooks or its explanation's hook is refused
when its class is defined (:meth:`DensityModel.__init_subclass__`).

Two optional inputs: ``layout`` (which columns form each raw feature: a numeric column or a
one-hot block, see :class:`Block`; stored as ``layout_``) and ``context`` (always-observed
conditioning columns, one row per row of X: a model with ``supports_context`` then gives the
conditional density log p(x | context); the others refuse a context).

Discrete columns get probability mass, not density (Theis, van den Oord & Bethge 2016): a
numeric block with a lattice ``step`` (e.g. an integer count) and, for kinds without native
categories, every one-hot column (step 1) are *dequantised*. The model is fitted on
x + u·step, u ~ U(−½, ½) (seeded), a continuous density q; ``log_prob`` then reports the log
of the cell mass ∫ q over [x − step/2, x + step/2] per discrete column (times the density of
the continuous ones), estimated by log-mean-exp of q at ``CELL_POINTS`` fixed Latin-hypercube
points of the cell: an unbiased estimate of the mass whose log is a lower bound in expectation
(Jensen), so it never claims more than the model holds. Every kind's number is then the
log-probability of the same event and the kinds compare in nats. Kinds that compute cell
masses themselves set ``exact_cells`` (``kde``/``knn``: exact discrete Gaussian kernels;
``auto`` delegates to its candidates); ``gmm`` gives one-hot blocks and lattice columns with
few levels a pmf per component, so it leaves them out of ``cell_widths_`` (names their
lattice in ``_lattice``) and dequantises only the lattice columns with many levels.

Saved form (no pickle anywhere): ``config.json`` (kind, constructor arguments, fitted shape,
layout, context width) plus ``weights.npz`` (numpy arrays, loaded with ``allow_pickle=False``).
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from anomaly.models import replacement
from anomaly.models.constraints import Interval, Table, check_parameters

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: log(2π), the normal density's constant
LOG_2PI = math.log(2 * math.pi)
#: log_prob never goes below this (a row astronomically far from the data stays finite).
MIN_LOG_PROB = -1e12
#: probability that kinds modelling categories natively give to "a category not seen in
#: training" (an all-zero one-hot block); the known categories share the remaining 1 − UNSEEN_PROB,
#: so the distribution over categories still sums to one.
UNSEEN_PROB = 1e-9
#: points per cell at which a dequantised density is evaluated (see the module docstring)
CELL_POINTS = 16
#: the hook that computes each ``explanation``, or hooks one of which does (None: the generic
#: search, any kind)
EXPLANATION_HOOKS = {
    "replacement": None,
    "closed_form": "_best_replacements",
    "mixture": ("_conditional_mixtures", "_mixture_replacements"),
    "conditional": "conditional_modes",
}


@dataclass(frozen=True)
class Block:
    """One raw feature's columns in the model matrix: a numeric column or a one-hot block."""

    name: str
    start: int
    stop: int
    categorical: bool = False
    #: a numeric column whose values lie on a lattice with this spacing (model units), e.g.
    #: integer counts; its likelihood is the mass of the cell of width ``step`` (0: continuous)
    step: float = 0.0


def default_layout(n_columns: int) -> list[Block]:
    """Every column its own numeric feature, named ``x0``, ``x1``, …"""
    return [Block(f"x{j}", j, j + 1) for j in range(n_columns)]


def check_layout(layout: list[Block], n_columns: int) -> list[Block]:
    """``layout`` as a list, or a ValueError unless its blocks tile the columns in order."""
    layout = list(layout)
    position = 0
    for block in layout:
        if not isinstance(block, Block):
            msg = f"layout entries must be Block objects, got {type(block).__name__}"
            raise TypeError(msg)
        width = block.stop - block.start
        if not (block.step >= 0 and np.isfinite(block.step)):
            msg = f"layout block {block.name!r}: step must be a finite number ≥ 0"
            raise ValueError(msg)
        if block.start != position or width < 1 or (width != 1 and not block.categorical):
            msg = (
                f"layout block {block} does not fit: blocks must tile columns 0..{n_columns} in "
                "order, numeric blocks one column wide"
            )
            raise ValueError(msg)
        position = block.stop
    if position != n_columns:
        msg = f"layout covers {position} columns, but X has {n_columns}"
        raise ValueError(msg)
    names = [b.name for b in layout]
    if len(set(names)) != len(names):
        msg = f"layout block names must be unique, got {names}"
        raise ValueError(msg)
    return layout


def lattice_step(values: np.ndarray, max_levels: int = 1_000, max_share: float = 1.0) -> float:
    """Spacing of the lattice the values lie on (every gap a whole multiple of the smallest),
    or 0.0 for continuous values: at least 2 and at most ``max_levels`` distinct values, and at
    most ``max_share`` × the number of values (values that hardly repeat cannot make a density
    spike, e.g. amounts in cents)."""
    values = np.asarray(values, dtype=np.float64)
    levels = np.unique(values)
    if not 2 <= len(levels) <= min(max_levels, max_share * len(values)):
        return 0.0
    gaps = np.diff(levels)
    step = gaps.min()
    ratio = gaps / step
    on_lattice = np.abs(ratio - np.round(ratio)) <= 1e-6 * np.maximum(ratio, 1.0)
    return float(step) if on_lattice.all() else 0.0


def lattice_layout(X: np.ndarray) -> list[Block]:
    """Every column its own numeric feature, with its lattice step where it has one."""
    X = np.asarray(X, dtype=np.float64)
    return [Block(f"x{j}", j, j + 1, step=lattice_step(X[:, j])) for j in range(X.shape[1])]


def category_codes(block: np.ndarray) -> np.ndarray:
    """Category index of each row of a one-hot block; −1 where no column is 1 (unseen)."""
    codes = block.argmax(axis=1)
    return np.where(block[np.arange(len(block)), codes] > 0.5, codes, -1)


class DensityModel(abc.ABC):
    """Base class: a density on R^d fitted by maximum likelihood.

    Parameters
    ----------
    seed : int
        Seeds everything random in ``fit`` (splits, initialisation, dequantisation noise), so a
        refit with the same seed gives the same model.

    Attributes
    ----------
    n_features_in_ : int
        Columns of the X passed to ``fit``.
    layout_ : list of Block
        The raw features' columns (every column numeric unless ``fit`` was given a layout).
    n_context_ : int
        Context columns ``fit`` was given (0: none).
    cell_widths_ : ndarray of shape (n_features_in_,)
        Per column, the width of a discrete column's cell (0: continuous).
    cell_origins_ : ndarray of shape (n_features_in_,)
        Per column, a lattice point of a discrete column (0 on continuous ones).
    """

    #: the kind's name in :data:`~anomaly.models.KINDS` ("" for a base class that is no kind)
    kind: ClassVar[str] = ""
    #: parameter → the constraints it may satisfy (any one), for the parameters this class's
    #: ``__init__`` adds; a kind's table is the union over its bases (:meth:`parameter_table`)
    parameter_constraints: ClassVar[Table] = {
        "seed": [Interval(Integral, 0, None)],
    }
    #: whether the kind models log p(x | context); see :func:`context_kinds`
    supports_context: ClassVar[bool] = False
    #: whether the kind models one-hot blocks as categories (a pmf) itself
    native_categories: ClassVar[bool] = False
    #: whether the kind reports cell masses of discrete columns itself (no dequantisation here)
    exact_cells: ClassVar[bool] = False
    #: whether ``sample`` is sequential over the columns (one network pass per column, so a
    #: draw costs ∝ d² where the others' cost ∝ d); ``auto`` proposes from such kinds less
    sequential_sampling: ClassVar[bool] = False
    #: how explanations find each feature's most likely value given the others
    #: (:meth:`best_replacements`): ``replacement``, the generic search; a kind with closed-form
    #: conditionals names its own way (``closed_form``, ``mixture``: :meth:`_best_replacements`;
    #: ``conditional``: :meth:`conditional_modes`)
    explanation: ClassVar[str] = "replacement"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a kind (a class with a ``kind``) that lacks a constraint for a constructor
        parameter, its storage hooks, or the hook its ``explanation`` is computed by."""
        super().__init_subclass__(**kwargs)
        if not cls.kind:
            return
        problems = []
        unconstrained = set(cls._parameter_names()) - set(cls.parameter_table())
        if unconstrained:
            problems.append(f"no parameter_constraints for {sorted(unconstrained)}")
        if cls.explanation not in EXPLANATION_HOOKS:
            problems.append(f"explanation must be one of {sorted(EXPLANATION_HOOKS)}")
        else:
            hook = EXPLANATION_HOOKS[cls.explanation]
            hooks = (hook,) if isinstance(hook, str) else hook or ()
            if hooks and not any(cls._defines(h) for h in hooks):
                problems.append(f"explanation {cls.explanation!r} needs {' or '.join(hooks)}")
        if not (
            (cls._defines("_state") and cls._defines("_load_state"))
            or (cls._defines("_save_weights") and cls._defines("_load_weights"))
        ):
            problems.append("storage needs _state and _load_state")
        if problems:
            msg = f"model kind {cls.kind!r} ({cls.__qualname__}): " + "; ".join(problems)
            raise TypeError(msg)

    @classmethod
    def _defines(cls, hook: str) -> bool:
        """Whether the class (or a base below DensityModel) overrides ``hook``."""
        return getattr(cls, hook) is not getattr(DensityModel, hook)

    @classmethod
    def _parameter_names(cls) -> list[str]:
        """The constructor parameters of this class and its bases (``**kwargs`` passed on to
        a base are that base's)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" not in vars(klass) or klass is object:
                continue
            for name, p in inspect.signature(klass.__init__).parameters.items():
                if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and name not in names:
                    names.append(name)
        return names

    @classmethod
    def parameter_table(cls) -> Table:
        """Every constructor parameter → its constraints (a subclass's entry wins)."""
        table: Table = {}
        for klass in reversed(cls.__mro__):
            table |= vars(klass).get("parameter_constraints", {})
        return table

    # ------------------------------------------------------------------ public contract
    def validate_parameters(self) -> None:
        """Raise :class:`~anomaly.models.InvalidParameterError` naming the first constructor
        parameter its table (:meth:`parameter_table`) does not allow; ``fit`` calls it first."""
        check_parameters(self.parameter_table(), self.get_params(), self.kind)

    def fit(
        self,
        X: np.ndarray,
        layout: list[Block] | None = None,
        context: np.ndarray | None = None,
    ) -> Self:
        """Fit on normal rows (n_samples × n_features) and return ``self``.

        ``layout``: the raw features' columns (None: every column numeric). ``context``: the
        conditioning columns, one row per row of X (only kinds with ``supports_context``).
        The constructor parameters are checked first (:meth:`validate_parameters`).
        """
        self.validate_parameters()
        X = _as_matrix(X, "fit")
        if X.shape[0] < 2:
            msg = f"{self.kind}: need at least 2 rows to fit, got {X.shape[0]}"
            raise ValueError(msg)
        self._refuse_context(context)
        C = None if context is None else _context_matrix(context, X.shape[0], "fit")
        self.layout_ = check_layout(layout or default_layout(X.shape[1]), X.shape[1])
        self.n_context_ = 0 if C is None else C.shape[1]
        self.n_features_in_ = X.shape[1]
        self.cell_widths_, self.cell_origins_ = self._cells(X)
        if self._dequantised():  # fit a continuous density to x + u·step
            noise = np.random.default_rng(self.seed).uniform(-0.5, 0.5, X.shape)
            X = X + noise * self.cell_widths_
        # progress, one line per fit (``auto``: per candidate); ``anomaly train`` shows them
        logger.info("fitting %s on %d rows × %d columns", self.kind, *X.shape)
        start = time.perf_counter()
        with _threads(getattr(self, "n_threads", None)):
            if self.supports_context:
                self._fit(X, context=C)
            else:
                self._fit(X)
        logger.info("fitted %s in %.1f s", self.kind, time.perf_counter() - start)
        return self

    def log_prob(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """Natural-log density of each row (given its context row), float64, finite."""
        X = self._check_input(X)
        C = self._check_context(context, X.shape[0], "log_prob")
        if X.shape[0] == 0:
            return np.zeros(0)
        with _threads(getattr(self, "n_threads", None)):
            lp = self._cell_log_prob(X, C) if self._dequantised() else self._density(X, C)
        return np.nan_to_num(lp, nan=MIN_LOG_PROB, neginf=MIN_LOG_PROB).clip(MIN_LOG_PROB)

    def _density(self, X: np.ndarray, C: np.ndarray | None) -> np.ndarray:
        if self.supports_context:
            return np.asarray(self._log_prob(X, context=C), dtype=np.float64)
        return np.asarray(self._log_prob(X), dtype=np.float64)

    def _cells(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per column: the cell width (0 = continuous) and a lattice point (for sampling)."""
        widths = np.zeros(X.shape[1])
        for block in self.layout_:
            if block.categorical and not self.native_categories:
                widths[block.start : block.stop] = 1.0
            elif not block.categorical:
                widths[block.start] = block.step
        origins = np.where(widths > 0, X[0], 0.0)
        return widths, origins

    def _lattice(self, j: int) -> tuple[float, float]:
        """Column j's lattice, (its spacing, one of its points); (0, 0) on a continuous column
        (a kind whose discrete columns are not cells of ``cell_widths_`` overrides this)."""
        return float(self.cell_widths_[j]), float(self.cell_origins_[j])

    def _dequantised(self) -> bool:
        widths = getattr(self, "cell_widths_", None)
        return not self.exact_cells and widths is not None and bool((widths > 0).any())

    def _cell_log_prob(self, X: np.ndarray, C: np.ndarray | None) -> np.ndarray:
        """log ∫_cell q: log-mean-exp of the fitted density at fixed points of each row's cell."""
        total = np.full(X.shape[0], -np.inf)
        for offset in self._cell_offsets():
            total = np.logaddexp(total, self._density(X + offset, C))
        widths = self.cell_widths_
        return total - np.log(CELL_POINTS) + np.log(widths[widths > 0]).sum()

    def _cell_offsets(self) -> np.ndarray:
        """The ``CELL_POINTS`` fixed points of a cell, as offsets from its centre (points ×
        columns; 0 on continuous columns): a seeded Latin hypercube."""
        widths = self.cell_widths_
        rng = np.random.default_rng(self.seed)
        strata = (np.arange(CELL_POINTS) + 0.5) / CELL_POINTS - 0.5
        return np.stack([rng.permutation(strata) for _ in widths], axis=1) * widths

    def explanation_for(self, layout: list[Block]) -> str:
        """The method :meth:`best_replacements` uses for ``layout`` by default: the kind's own
        ``explanation``, or the search where that needs the model's own layout."""
        if self.explanation == "conditional" and layout != self.layout_:
            return "replacement"
        return self.explanation

    def best_replacements(
        self,
        X: np.ndarray,
        layout: list[Block],
        method: str | None = None,
        context: np.ndarray | None = None,
        grid: int = 6,
        refine: int = 3,
        seed: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per row and block b of ``layout``: the gain max_v log p(x with x_b := v) − log p(x)
        (n × blocks, nats, ≥ 0) and each block's maximiser in its own columns (n × columns; the
        row's own value where the gain is 0). See ``anomaly/models/replacement.py``.

        ``method``: None for :meth:`explanation_for`, or ``"replacement"`` (the generic search
        with ``grid``, ``refine`` and ``seed``, for any kind).
        """
        X = self._check_input(X)
        C = self._check_context(context, X.shape[0], "best_replacements")
        own = self.explanation_for(layout)
        method = own if method is None else method
        if method == self.explanation and method != own:
            msg = f"method {method!r} needs the layout the model was fitted with"
            raise ValueError(msg)
        if method not in (own, "replacement"):
            msg = (
                f"method {method!r} does not explain a {self.kind} model: use {own!r} (its "
                "own) or 'replacement' (the generic search)"
            )
            raise ValueError(msg)
        if method == "replacement":
            return replacement.search(self, X, layout, C, grid=grid, refine=refine, seed=seed)
        if method == "conditional":
            kwargs = {} if C is None else {"context": C}
            return replacement.from_modes(X, layout, *self.conditional_modes(X, **kwargs))
        if method == "mixture":
            return self._mixture_replacements(X, layout)
        return self._best_replacements(X, layout, C)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's name for :meth:`log_prob`."""
        return self.log_prob(X)

    def sample(self, n: int, seed: int = 0, context: np.ndarray | None = None) -> np.ndarray:
        """Draw ``n`` synthetic rows from the fitted density (row i given context row i)."""
        self._check_fitted()
        if n < 0:
            msg = f"n must be ≥ 0, got {n}"
            raise ValueError(msg)
        C = self._check_context(context, n, "sample")
        rng = np.random.default_rng(seed)
        with _threads(getattr(self, "n_threads", None)):
            out = self._sample(n, rng, context=C) if self.supports_context else self._sample(n, rng)
        out = np.asarray(out, dtype=np.float64).reshape(n, self.n_features_in_)
        if self._dequantised():  # a draw of x + u·step: its cell's lattice point
            widths, origins = self.cell_widths_, self.cell_origins_
            safe = np.where(widths > 0, widths, 1.0)
            snapped = origins + np.round((out - origins) / safe) * safe
            out = np.where(widths > 0, snapped, out)
        return out

    def candidate_sample(
        self, n: int, seed: int = 0, context: np.ndarray | None = None
    ) -> np.ndarray:
        """Draws whose marginal quantiles place the explanation search's candidate values
        (``anomaly/models/replacement.py``): :meth:`sample`; a kind whose sampling is costly
        may give cheaper draws with the same support."""
        return self.sample(n, seed=seed, context=context)

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments (of this class and its bases), as stored by ``__init__``."""
        return {name: getattr(self, name) for name in self._parameter_names()}

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and the weights to ``directory`` (created if needed)."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "layout": [asdict(block) for block in self.layout_],
            "n_context": self.n_context_,
            "cells": {"widths": self.cell_widths_.tolist(), "origins": self.cell_origins_.tolist()},
            "fitted": self._fitted_json(),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        self._save_weights(directory)
        return directory

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _fit(self, X: np.ndarray) -> None:
        """Fit to the checked rows (dequantised where ``fit`` says so); kinds with
        ``supports_context`` also take ``context``."""

    @abc.abstractmethod
    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        """Log-density of each checked row (kinds with ``supports_context``: given
        ``context``)."""

    @abc.abstractmethod
    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` rows drawn with ``rng`` (kinds with ``supports_context``: given ``context``)."""

    def _state(self) -> dict[str, np.ndarray]:
        """Fitted arrays to save."""
        raise NotImplementedError

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        """Restore fitted attributes from :meth:`_state` arrays and :meth:`_fitted_json`."""
        raise NotImplementedError

    def _best_replacements(
        self, X: np.ndarray, layout: list[Block], context: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The kind's own :meth:`best_replacements` (kinds whose ``explanation`` is
        ``closed_form``)."""
        raise NotImplementedError

    def _conditional_mixtures(
        self, X: np.ndarray, columns: list[int]
    ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Per column j, x_j given x_-j as a 1-D mixture (kinds whose ``explanation`` is
        ``mixture``; see :func:`anomaly.models.replacement.mixture_search`)."""
        raise NotImplementedError

    def _mixture_replacements(
        self, X: np.ndarray, layout: list[Block]
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`best_replacements` for ``mixture``: the modes of :meth:`_conditional_mixtures`
        scored by ``log_prob``; a kind that scores its modes exactly itself overrides this."""
        return replacement.mixture_search(self, X, layout, self._conditional_mixtures)

    def conditional_modes(
        self, X: np.ndarray, context: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per block of ``layout_`` (kinds whose ``explanation`` is ``conditional``):
        log p(x_b | x_-b), its value at the conditional's mode, and the modes (n × blocks,
        n × blocks, n × columns)."""
        raise NotImplementedError

    def _fitted_json(self) -> dict[str, Any]:
        """Small fitted values (chosen hyper-parameters) stored in ``config.json``."""
        return {}

    def _save_weights(self, directory: Path) -> None:
        np.savez(directory / "weights.npz", **self._state())

    def _load_weights(self, directory: Path, fitted: dict[str, Any]) -> None:
        with np.load(directory / "weights.npz", allow_pickle=False) as data:
            state = {key: data[key] for key in data.files}
        self._load_state(state, fitted)

    # ------------------------------------------------------------------ helpers
    def _refuse_context(self, context: np.ndarray | None) -> None:
        if context is not None and not self.supports_context:
            from anomaly.models.kinds import context_kinds

            msg = (
                f"model kind {self.kind!r} cannot condition on context columns; "
                f"kinds that can: {', '.join(context_kinds())}"
            )
            raise ValueError(msg)

    def _check_context(self, context: np.ndarray | None, n: int, what: str) -> np.ndarray | None:
        """The context matrix for ``n`` rows, or an error if it is missing, extra or wrong."""
        self._refuse_context(context)
        if self.n_context_ == 0:
            if context is not None:
                msg = f"{what}: this {self.kind} model was fitted without context; pass none"
                raise ValueError(msg)
            return None
        if context is None:
            msg = (
                f"{what}: this {self.kind} model was fitted with {self.n_context_} context "
                "column(s); pass context (one row per row)"
            )
            raise ValueError(msg)
        C = _context_matrix(context, n, what)
        if C.shape[1] != self.n_context_:
            msg = (
                f"{what}: context has {C.shape[1]} columns, but this {self.kind} model was "
                f"fitted on {self.n_context_}"
            )
            raise ValueError(msg)
        return C

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            from sklearn.exceptions import NotFittedError

            msg = f"this {self.kind} model is not fitted yet: call fit(X) first"
            raise NotFittedError(msg)

    def _check_input(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = _as_matrix(X, "log_prob")
        if X.shape[1] != self.n_features_in_:
            msg = (
                f"X has {X.shape[1]} features, but this {self.kind} model was fitted "
                f"on {self.n_features_in_}"
            )
            raise ValueError(msg)
        return X


def _context_matrix(context: np.ndarray, n: int, what: str) -> np.ndarray:
    C = _as_matrix(context, f"{what} (context)")
    if C.shape[0] != n:
        msg = f"{what}: context has {C.shape[0]} rows, expected {n} (one per row)"
        raise ValueError(msg)
    return C


def _as_matrix(X: np.ndarray, what: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        msg = f"{what} expects a 2-D array (rows × features), got shape {X.shape}"
        raise ValueError(msg)
    if not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        msg = f"{what}: {bad} rows contain NaN or inf; quarantine or clean them first"
        raise ValueError(msg)
    return X


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run torch with ``n`` threads, restoring the previous setting; ``None`` leaves the
    caller's setting (``torch.set_num_threads``, ``OMP_NUM_THREADS``) alone: a library call
    never changes process-wide thread pools behind the caller's back."""
    if n is None:
        yield
        return
    import torch  # only torch kinds have n_threads

    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def nonzero_scale(std: np.ndarray) -> np.ndarray:
    """Per-column scale for standardising: the spread, or 1 where a column is constant."""
    return np.where(std > 0, std, 1.0)


def heldout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (held-out, rest) row indices of ``n`` rows; ``fraction`` held out, at least one."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = max(1, round(fraction * n))
    return order[:n_held], order[n_held:]
