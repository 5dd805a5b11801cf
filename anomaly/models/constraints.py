"""Declared constraints on the models' constructor parameters, checked once at ``fit``.

Each model class states what each of its constructor parameters may be in one table next to the
class, ``parameter_constraints`` (a parameter name → the constraints it may satisfy, any one of
them), after scikit-learn's ``_parameter_constraints`` and ``validate_params``:

>>> from numbers import Integral
>>> table = {"k": [Interval(Integral, 1, None), None], "rule": [Options("mean", "stack")]}
>>> check_parameters(table, {"k": 5, "rule": "mean"}, "demo")
>>> check_parameters(table, {"k": 0, "rule": "mean"}, "demo")
Traceback (most recent call last):
...
anomaly.models.constraints.InvalidParameterError: demo: k must be an integer ≥ 1 or None, got 0

A constraint is ``None`` (the value None), a type (``bool``, ``dict``: an instance of it), or
one of :class:`Interval`, :class:`Options` and :class:`SequenceOf`. Constructors only store
their arguments (scikit-learn's convention); :meth:`DensityModel.fit
<anomaly.models.base.DensityModel.fit>` checks them before any work.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral
from typing import Any

#: one constraint: None, a type, or an :class:`Interval`, :class:`Options` or :class:`SequenceOf`
Constraint = Any
#: a parameter-constraints table: parameter → the constraints it may satisfy (any one of them)
Table = dict[str, list[Constraint]]


class InvalidParameterError(ValueError, TypeError):
    """A constructor argument outside its declared constraints: a ``ValueError`` (a wrong value
    is the user's to fix) and a ``TypeError`` (for code that expects one for a wrong type), as
    scikit-learn's ``InvalidParameterError``."""


@dataclass(frozen=True)
class Interval:
    """A finite number of ``type`` (``Integral`` or ``Real``; never a bool) between ``low`` and
    ``high`` (None: unbounded), the ends included as ``closed`` says; ``even``: a multiple of 2."""

    type: type
    low: float | None
    high: float | None
    closed: str = "left"  # "left", "right", "both" or "neither"
    even: bool = False

    def allows(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, self.type):
            return False
        if not math.isfinite(value) or (self.even and value % 2):
            return False
        low_ok = self.low is None or (
            value >= self.low if self.closed in ("left", "both") else value > self.low
        )
        high_ok = self.high is None or (
            value <= self.high if self.closed in ("right", "both") else value < self.high
        )
        return low_ok and high_ok

    def __str__(self) -> str:
        noun = "an integer" if self.type is Integral else "a number"
        noun = "an even integer" if self.even else noun
        left = "[" if self.closed in ("left", "both") else "("
        right = "]" if self.closed in ("right", "both") else ")"
        if self.low is not None and self.high is not None:
            return f"{noun} in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f"{noun} {'≥' if left == '[' else '>'} {self.low}"
        if self.high is not None:
            return f"{noun} {'≤' if right == ']' else '<'} {self.high}"
        return noun if self.type is Integral else "a finite number"


@dataclass(frozen=True, init=False)
class Options:
    """One of the given strings."""

    values: tuple[str, ...]

    def __init__(self, *values: str) -> None:
        object.__setattr__(self, "values", values)

    def allows(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))


@dataclass(frozen=True)
class SequenceOf:
    """A list or tuple of at least ``min_length`` items, each allowed by ``item``."""

    item: Interval | Options
    min_length: int = 1

    def allows(self, value: Any) -> bool:
        return (
            isinstance(value, list | tuple)
            and len(value) >= self.min_length
            and all(self.item.allows(v) for v in value)
        )

    def __str__(self) -> str:
        size = {0: "a list", 1: "a non-empty list"}.get(self.min_length)
        return f"{size or f'a list of at least {self.min_length}'}, each {self.item}"


def allows(constraint: Constraint, value: Any) -> bool:
    """Whether ``value`` satisfies one constraint."""
    if constraint is None:
        return value is None
    if isinstance(constraint, type):
        return isinstance(value, constraint)
    return constraint.allows(value)


def describe(constraints: list[Constraint]) -> str:
    """What the constraints allow, in words ("an integer ≥ 1 or None")."""
    words = []
    for c in constraints:
        if c is None:
            words.append("None")
        elif isinstance(c, type):
            words.append(f"a {c.__name__}")
        else:
            words.append(str(c))
    return " or ".join(words)


def check_parameters(table: Table, params: Mapping[str, Any], owner: str) -> None:
    """Raise :class:`InvalidParameterError` naming the first parameter of ``params`` that no
    constraint of ``table`` allows (its value and what is allowed); ``owner`` starts the
    message (the model kind)."""
    for name, value in params.items():
        constraints = table[name]
        if not any(allows(c, value) for c in constraints):
            msg = f"{owner}: {name} must be {describe(constraints)}, got {value!r}"
            raise InvalidParameterError(msg)
