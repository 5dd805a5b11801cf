"""Density models behind one contract: ``create(kind)``, ``fit``, ``log_prob``, ``sample``,
``save`` and :func:`load`. A kind's module (and torch, for the torch kinds) is imported only
when that kind is used (:mod:`anomaly.models.kinds`)."""

from __future__ import annotations

from anomaly.models.base import Block, DensityModel, lattice_layout, lattice_step
from anomaly.models.constraints import InvalidParameterError
from anomaly.models.kinds import KINDS, context_kinds, create
from anomaly.models.loading import load

__all__ = [
    "KINDS",
    "Block",
    "DensityModel",
    "InvalidParameterError",
    "context_kinds",
    "create",
    "lattice_layout",
    "lattice_step",
    "load",
]
