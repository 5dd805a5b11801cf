"""Variational auto-encoder whose log-likelihood is estimated by importance sampling.

Trained on the ELBO (Kingma & Welling 2014). Scores are not the ELBO but
log p(x) ≈ log 1/K Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(·|x) (Burda et al. 2016), whose
exponential is an unbiased estimate of p(x). The K standard-normal draws are fixed by the seed
and shared by every row, so a row's score does not depend on its batch. They come in antithetic
pairs (ε, −ε): each draw is still a draw from q, but where q is close to the posterior the pairs
cancel its first-order error. On the banana test density with 400 training rows, the integral of
exp(log p) over the plane was 0.988–0.999 with 16 antithetic draws for three seeds, against
0.963–1.093 with 16 independent draws and 0.998–1.111 with 128.

Explanations (``mixture``): with the draws z_k ~ q(·|x) of the row itself as the proposal for
every value of one feature, p(x with x_j := v) ≈ 1/K Σ_k w_k N(v; decoder_j(z_k), σ_j²),
w_k = p(x_-j|z_k) p(z_k) / q(z_k|x): a 1-D Gaussian mixture in v whose mode is then scored by
``log_prob`` (``anomaly/models/replacement.py``), at the cost of one decoder pass per draw and
row instead of one ``log_prob`` row per candidate value.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly.models import replacement
from anomaly.models.base import LOG_2PI
from anomaly.models.torch_density import SCORE_BATCH, TorchDensity


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
    """VAE density; ``importance_samples`` is K of the log-likelihood estimate."""

    kind = "vae"
    explanation = "mixture"

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
        if not (isinstance(K, int) and K >= 2 and K % 2 == 0):
            msg = f"vae: importance_samples must be an even integer >= 2 (antithetic pairs): {K}"
            raise ValueError(msg)
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

    def _conditional_mixtures(
        self, X: np.ndarray, columns: list[int]
    ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """x_j given x_-j, per column j: the decoder's N(v; decoder_j(z_k), σ_j²) weighted by
        p(x_-j|z_k) p(z_k) / q(z_k|x), over the importance draws z_k of the row itself (module
        docstring). With discrete columns, ``log_prob`` averages the density over fixed points
        x + o_s of the cell, so the mixture has a component per point and draw."""
        offsets = self._cell_offsets() if self._dequantised() else np.zeros((1, X.shape[1]))
        n, K = X.shape[0], self._eps.shape[0]
        width = K * len(offsets)
        log_w = {j: np.empty((n, width)) for j in columns}
        means = {j: np.empty((n, width)) for j in columns}
        module, eps = self.module_, self._eps
        log_noise = module.log_noise.detach().clamp_min(-7.0)
        noise = log_noise.exp().double().numpy()
        with torch.inference_mode():
            for rows in replacement.row_batches(n, SCORE_BATCH // K):
                for s, offset in enumerate(offsets):
                    Z = torch.from_numpy((X[rows] + offset - self.mean_) / self.scale_).float()
                    mean, log_std = module.encode(Z)
                    z = mean[None] + log_std.exp()[None] * eps[:, None, :]  # K × rows × latent
                    log_q = _normal_log_pdf(z, mean[None], log_std[None])
                    log_prior = (-0.5 * z * z - 0.5 * LOG_2PI).sum(-1)
                    decoded = module.decoder(z)  # K × rows × d
                    terms = -0.5 * ((Z[None] - decoded) / log_noise.exp()) ** 2 - log_noise
                    joint = (terms.sum(-1) + log_prior - log_q).double()
                    cells = slice(s * K, (s + 1) * K)
                    for j in columns:  # p(x_-j|z) = p(x|z) / N(x_j; decoder_j(z), σ_j²)
                        log_w[j][rows, cells] = (joint - terms[:, :, j].double()).T.numpy()
                        centre = decoded[:, :, j].double().T.numpy() * self.scale_[j]
                        means[j][rows, cells] = centre + self.mean_[j] - offset[j]
        return [
            (j, log_w[j], means[j], np.full((n, width), (noise[j] * self.scale_[j]) ** 2))
            for j in columns
        ]
