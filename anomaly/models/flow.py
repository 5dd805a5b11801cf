"""Normalising flows with exact likelihood: masked autoregressive (MAF) or neural spline (NSF).

Built on zuko (Rozet et al.); the module is a plain zuko ``Flow`` and the training loop is
:class:`~anomaly.models.torch_density.TorchDensity`'s. Given context columns, the flow is
conditional: zuko feeds the (standardised) context to every transform's network, and the density is
log p(x | context).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar, Literal

import torch
import zuko
from torch import nn

from anomaly.models.constraints import Interval, Options, SequenceOf, Table
from anomaly.models.torch_density import TorchDensity

#: flow_type → the zuko flow
FLOWS = {"maf": zuko.flows.MAF, "nsf": zuko.flows.NSF}


class Flow(TorchDensity):
    """A MAF (affine, Papamakarios et al. 2017) or NSF (splines, Durkan et al. 2019) flow.

    Parameters
    ----------
    flow_type : {"maf", "nsf"}
        Affine (MAF) or rational-quadratic spline (NSF) autoregressive transforms.
    transforms : int ≥ 1
        Transforms stacked.
    hidden : list of int ≥ 1
        Hidden layer widths of each transform's network.
    **train
        The training parameters of :class:`~anomaly.models.torch_density.TorchDensity`
        (``seed``, ``max_epochs``, ``batch_size``, ``learning_rate``, …).

    Attributes
    ----------
    module_ : zuko.flows.Flow
        The trained flow (on standardised rows); also those of ``TorchDensity``.

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import create
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> model = create("flow", transforms=1, hidden=(8,), max_epochs=2, progress=False)
    >>> model.fit(X).log_prob(X[:4]).shape, model.sample(3, seed=0).shape
    ((4,), (3, 2))
    """

    kind = "flow"
    supports_context = True
    sequential_sampling = True  # MAF and NSF invert one autoregressive pass per column
    parameter_constraints: ClassVar[Table] = {
        "flow_type": [Options(*FLOWS)],
        "transforms": [Interval(Integral, 1, None)],
        "hidden": [SequenceOf(Interval(Integral, 1, None), min_length=0)],
    }

    def __init__(
        self,
        seed: int = 0,
        flow_type: Literal["maf", "nsf"] = "maf",
        transforms: int = 5,
        hidden: tuple[int, ...] = (128, 128),
        **train: Any,
    ) -> None:
        super().__init__(seed, **train)
        self.flow_type = flow_type
        self.transforms = transforms
        self.hidden = hidden

    def _build(self, dim: int) -> nn.Module:
        return FLOWS[self.flow_type](
            dim,
            context=self.n_context_,
            transforms=self.transforms,
            hidden_features=tuple(self.hidden),
        )

    def _loss(
        self, module: nn.Module, batch: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        return -module(context).log_prob(batch).mean()

    def _module_log_prob(
        self, module: nn.Module, Z: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        return module(context).log_prob(Z)

    def _module_sample(
        self, module: nn.Module, n: int, context: torch.Tensor | None
    ) -> torch.Tensor:
        return module().sample((n,)) if context is None else module(context).sample()
