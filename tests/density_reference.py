"""The densities of ``independent`` and ``autoregressive`` written the slow, literal way (before
issue 18, item 6), as the reference ``tests/test_fast_scoring.py`` compares the fast scoring
paths with. Not used by the package."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import logsumexp

from anomaly.models.autoregressive import Autoregressive
from anomaly.models.base import UNSEEN_PROB, category_codes
from anomaly.models.independent import Independent

LOG_2PI = math.log(2 * math.pi)


def independent_feature_log_probs(model: Independent, X: np.ndarray) -> np.ndarray:
    """Each block's log p(x_b): every numeric term the full sum over the ``bins`` kernels."""
    out = np.empty((X.shape[0], len(model.layout_)))
    j = offset = 0
    for b, block in enumerate(model.layout_):
        if block.categorical:
            width = block.stop - block.start
            codes = category_codes(X[:, block.start : block.stop])
            lp = model.category_log_probs_[offset : offset + width]
            out[:, b] = np.where(codes >= 0, lp[np.maximum(codes, 0)], np.log(UNSEEN_PROB))
            offset += width
        else:
            z = (X[:, block.start] - model.loc_[j]) / model.scale_[j]
            h = model.bandwidths_[j]
            d = (z[:, None] - model.grid_[j][None]) / h
            kernel_sum = logsumexp(model.log_weights_[j][None] - 0.5 * d * d, axis=1)
            out[:, b] = kernel_sum - np.log(h) - 0.5 * LOG_2PI - np.log(model.scale_[j])
            j += 1
    return out


def autoregressive_log_prob(
    model: Autoregressive, X: np.ndarray, context: np.ndarray | None = None
) -> np.ndarray:
    """log p(x) as the mean over the orders of Π_t p(x_π(t) | x_π(<t)), each conditional from a
    full forward pass with the blocks before it observed (no running sums); a lattice feature's
    term is its cell's mass."""
    module = model.module_
    Z = torch.from_numpy((X - model.mean_) / model.scale_).float()
    C = model._standard_context(context)
    per_order = []
    with torch.inference_mode():
        for order in module.orders.tolist():
            mask = torch.zeros(Z.shape[0], module.n_blocks)
            total = torch.zeros(Z.shape[0], dtype=torch.float64)
            for block in order:
                total += module.block_log_probs(module(Z, mask, C), Z)[:, block]
                mask[:, block] = 1.0
            per_order.append(total)
    lp = torch.logsumexp(torch.stack(per_order), dim=0) - math.log(len(per_order))
    continuous = model._lattice_widths() == 0  # a lattice feature's term is a mass: no Jacobian
    return lp.numpy() - np.log(model.scale_[continuous]).sum()
