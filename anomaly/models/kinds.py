"""The model kinds by name. Each kind's module is imported on first use, so a command that
scores with ``gaussian`` never imports torch, and one that scores with ``knn`` never imports
scikit-learn's mixtures."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anomaly.models.base import DensityModel

#: kind → ``module:class`` (``anomaly.config.MODEL_KINDS`` names the same kinds)
PATHS = {
    "gaussian": "anomaly.models.gaussian:Gaussian",
    "gmm": "anomaly.models.gmm:GMM",
    "kde": "anomaly.models.kernel:KDE",
    "knn": "anomaly.models.kernel:KNN",
    "flow": "anomaly.models.flow:Flow",
    "vae": "anomaly.models.vae:VAE",
    "auto": "anomaly.models.auto:Auto",
    "independent": "anomaly.models.independent:Independent",
    "autoregressive": "anomaly.models.autoregressive:Autoregressive",
}


class Kinds(Mapping[str, "type[DensityModel]"]):
    """Kind name → model class, the class's module imported when it is first looked up."""

    def __getitem__(self, kind: str) -> type[DensityModel]:
        module, _, name = PATHS[kind].partition(":")
        return getattr(importlib.import_module(module), name)

    def __iter__(self) -> Iterator[str]:
        return iter(PATHS)

    def __len__(self) -> int:
        return len(PATHS)


KINDS = Kinds()


def context_kinds() -> list[str]:
    """The kinds that can model a density conditional on context columns (imports them all)."""
    return [kind for kind, cls in KINDS.items() if cls.supports_context]


def create(kind: str, seed: int = 0, **params: Any) -> DensityModel:
    """An unfitted model of ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        msg = f"unknown model kind {kind!r}; choose one of: {', '.join(KINDS)}"
        raise ValueError(msg)
    try:
        return KINDS[kind](seed=seed, **params)
    except TypeError as exc:
        msg = f"bad parameters for model kind {kind!r}: {exc}"
        raise ValueError(msg) from exc
