"""``autoregressive``: p(x) = Π_t p(x_π(t) | x_π(<t)), mixed types modelled natively.

One MLP gives every feature's conditional given any subset of the other features: its input is
the row with the unobserved features zeroed, the observed/unobserved mask (one bit per feature)
and the context columns, if any. Each numeric feature's conditional is a mixture of
``components`` Gaussians in standardised units; each categorical feature (a one-hot block of the
layout) gets a categorical distribution over its training categories, scaled by 1 − UNSEEN_PROB,
and an all-zero block (a category not seen in training) gets probability UNSEEN_PROB (log ≈
−20.7 nats), so every conditional sums/integrates to one. A numeric feature on a lattice
(``Block.step`` > 0: a 0/1 column, a count) gets the mass of its value's cell
[x − step/2, x + step/2] under its conditional mixture, the difference of the mixture's CDF
at the cell's edges, and later features are conditioned on the value itself: the model is a
mixed discrete/continuous autoregressive model, log p = Σ_continuous log p(x_b | x_<b) +
Σ_lattice log P(cell_b | x_<b), exactly normalised, with no dequantisation (``exact_cells``;
models saved before have ``cell_masses`` false and keep the base class's dequantised cells).

Training is order-agnostic (Uria, Murray & Larochelle 2014, "A deep and tractable density
estimator"; the same idea as MADE's mask resampling, Germain et al. 2015): per row a random
feature order and a random position k in it are drawn, the first k features are observed, and
the loss is −D/(D−k) Σ_unobserved log p(x_j | x_observed), an unbiased estimate of the negative
log-likelihood averaged over all D! orders. With ``smoothing`` s > 0 the numeric training values
are jittered by N(0, σ²) per batch, σ = s · n^(−1/(D+4)) standardised units (Scott's factor, the
bandwidth rule of a kernel density estimate): the network then fits the data's density smoothed
as a KDE with that bandwidth would, not the sharp peaks a few hundred rows allow. A lattice
feature's jittered value is moved to its nearest lattice point (its pmf smoothed by a discrete
Gaussian kernel, as ``kde`` smooths lattice columns). Early stopping still judges the
unjittered held-out rows. Scoring is unaffected: the density is the network's.

Scoring (``log_prob``): the exact log-density under ``orders`` fixed orders (the natural one
first, then seeded random ones), combined by log-mean-exp: the mixture of the orders' densities,
each a product of normalised conditionals, so the result is an exactly normalised density. Per
order, the first layer's input of each step is a running sum (what each observed block adds),
and the hidden layers run once over all D steps in one batch (``ARModule.conditionals``, also
behind ``feature_log_probs`` and ``conditional_modes``).
``feature_log_probs`` gives each feature's full conditional log p(x_b | x_-b, context) from the
same network (the order-agnostic training makes these the last step of some order); they are
approximate conditionals of the model's joint, not terms that sum to ``log_prob``.
"""

from __future__ import annotations

import itertools
import math
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from anomaly.models.base import LOG_2PI, UNSEEN_PROB, Block
from anomaly.models.constraints import Interval, SequenceOf, Table
from anomaly.models.torch_density import TorchDensity, _split

#: standardised inputs to the network are clipped to ±INPUT_CLIP (their likelihood is not)
INPUT_CLIP = 8.0
#: bounds of the mixture components' log standard deviation (standardised units)
LOG_STD_RANGE = (-7.0, 3.0)
#: rows × blocks per scoring pass (each pass holds a few float64 tensors of this × hidden)
PASS_CELLS = 2**11


def _category_log_prob(logits: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """log p of each row's category (UNSEEN_PROB for an all-zero block) under ``logits``."""
    code = onehot.argmax(dim=1)
    seen = onehot.gather(1, code[:, None])[:, 0] > 0.5
    lp = logits.log_softmax(-1).gather(1, code[:, None])[:, 0] + math.log1p(-UNSEEN_PROB)
    return torch.where(seen, lp, math.log(UNSEEN_PROB))


def _split_mixture(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log weights, means, log stds) from raw parameters whose last two axes are 3 × components."""
    log_w = params[..., 0, :].log_softmax(-1)
    return log_w, params[..., 1, :], params[..., 2, :].clamp(*LOG_STD_RANGE)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate at both ends (Mächler 2012); finite gradients."""
    near = x > -math.log(2)
    return torch.where(
        near,
        torch.log(-torch.expm1(torch.where(near, x, -1.0))),
        torch.log1p(-torch.exp(torch.where(near, -1.0, x))),
    )


#: a cell whose nearer edge is more than FAR_TAIL standard deviations out gets its mass from
#: log_ndtr (Φ there is below 1e-197, and underflows past about 38)
FAR_TAIL = 30.0


def _mixture_log_cell(
    x: torch.Tensor,
    half: torch.Tensor,
    log_w: torch.Tensor,
    mean: torch.Tensor,
    log_std: torch.Tensor,
) -> torch.Tensor:
    """log of the mixture's mass on [x − half, x + half] (float64; components on the last axis):
    per component log(Φ(b) − Φ(a)), taken on the side of the mean where the cell's middle is
    at or below it (Φ(b) − Φ(a) = Φ(−a) − Φ(−b)), so the smaller Φ is a left tail, where
    Φ(t) = erfc(−t/√2)/2 keeps its relative accuracy (torch's ``ndtr`` does not: 1 + erf).
    Cells beyond FAR_TAIL, or whose difference underflows, take :func:`_log_tail_cell`."""
    x, half = x.double(), half.double()
    log_w, mean, log_std = log_w.double(), mean.double(), log_std.double()
    a = (x - half - mean) / log_std.exp()
    b = (x + half - mean) / log_std.exp()
    flip = a + b > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    mass = 0.5 * (
        torch.special.erfc(-hi * math.sqrt(0.5)) - torch.special.erfc(-lo * math.sqrt(0.5))
    )
    far = (hi < -FAR_TAIL) | ~(mass > 1e-290)  # (NaN included)
    log_mass = torch.log(torch.where(far, 1.0, mass))  # no inf in the unused branch's gradient
    if far.any():
        log_mass = log_mass.masked_scatter(far, _log_tail_cell(lo[far], hi[far]))
    return torch.logsumexp(log_w + log_mass, dim=-1)


def _log_tail_cell(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Φ(hi) − Φ(lo)) for lo ≤ hi, lo + hi ≤ 0 (the cell in the left tail) from log_ndtr,
    accurate however far out, and never below the width times the density at lo (a lower
    bound that keeps cells astronomically far finite)."""
    log_hi = torch.special.log_ndtr(hi)
    gap = (torch.special.log_ndtr(lo) - log_hi).clamp(max=-1e-300)
    exact = log_hi + _log1mexp(gap)
    bound = torch.log(hi - lo) - 0.5 * lo**2 - 0.5 * LOG_2PI
    return torch.maximum(exact, bound)


def _mixture_log_pdf(
    x: torch.Tensor, log_w: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
) -> torch.Tensor:
    """log Σ_k w_k N(x; mean_k, std_k²), the components on the last axis (broadcast)."""
    log_pdf = -0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * LOG_2PI
    return torch.logsumexp(log_w + log_pdf, dim=-1)


class ARModule(nn.Module):
    """The conditional network: (masked row, mask, context) → every feature's conditional."""

    def __init__(
        self,
        layout: list[Block],
        n_context: int,
        hidden: tuple[int, ...],
        components: int,
        orders: torch.Tensor,
        steps: torch.Tensor | None = None,
        origins: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.n_blocks = len(layout)
        self.components = components
        self.numeric = [b.start for b in layout if not b.categorical]
        self.numeric_blocks = [i for i, b in enumerate(layout) if not b.categorical]
        # lattice (discrete) numeric features get the mass of their cell: their positions
        # among the numeric ones, their cell widths and a lattice point (standardised units)
        steps = torch.zeros(len(self.numeric)) if steps is None else steps
        origins = torch.zeros(len(self.numeric)) if origins is None else origins
        self.lattice = [j for j in range(len(self.numeric)) if steps[j] > 0]
        self.smooth = [j for j in range(len(self.numeric)) if steps[j] <= 0]
        self.lattice_columns = [self.numeric[j] for j in self.lattice]
        self.register_buffer("steps", steps.double(), persistent=False)
        self.register_buffer("origins", origins.double(), persistent=False)
        # the numeric blocks' hidden states as a view when they are consecutive (no copy)
        first = self.numeric_blocks[0] if self.numeric_blocks else 0
        consecutive = self.numeric_blocks == list(range(first, first + len(self.numeric)))
        self.numeric_rows = (
            slice(first, first + len(self.numeric)) if consecutive else self.numeric_blocks
        )
        self.categorical = [(i, b.start, b.stop) for i, b in enumerate(layout) if b.categorical]
        self.columns = [slice(b.start, b.stop) for b in layout]
        block_of_col = [i for i, b in enumerate(layout) for _ in range(b.start, b.stop)]
        self.register_buffer("block_of_col", torch.tensor(block_of_col, dtype=torch.long))
        self.register_buffer("orders", orders)
        n_out = 3 * components * len(self.numeric) + sum(s - a for _, a, s in self.categorical)
        sizes = [len(block_of_col) + self.n_blocks + n_context, *hidden, n_out]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers[:-1])
        # each block's slice of the output: numeric j → 3 × components values, then categories
        numeric_width = 3 * components * len(self.numeric)
        self.block_slices = [slice(0, 0)] * self.n_blocks
        for j, i in enumerate(self.numeric_blocks):
            self.block_slices[i] = slice(3 * components * j, 3 * components * (j + 1))
        offset = numeric_width
        for i, start, stop in self.categorical:
            self.block_slices[i] = slice(offset, offset + stop - start)
            offset += stop - start
        # start each numeric conditional as components spread over the standard normal's
        # quantiles, narrower than the data: a symmetric start stays stuck at one Gaussian
        with torch.no_grad():
            last = self.net[-1]
            last.weight.mul_(0.1)
            bias = last.bias[: 3 * components * len(self.numeric)].view(-1, 3, components)
            bias[:, 0] = 0.0
            bias[:, 1] = torch.special.ndtri((torch.arange(components) + 0.5) / components)
            bias[:, 2] = math.log(0.5)

    def forward(
        self, Z: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        """Raw conditional parameters for rows Z whose features ``mask`` (rows × blocks) shows."""
        return self.net[1:](self.input_layer(Z, mask, context))

    def input_layer(
        self, Z: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        """The first layer's pre-activation for rows Z whose features ``mask`` shows."""
        observed = Z.clamp(-INPUT_CLIP, INPUT_CLIP) * mask[:, self.block_of_col]
        parts = [observed, mask] + ([context] if context is not None else [])
        return self.net[0](torch.cat(parts, dim=1))

    def block_inputs(self, Z: torch.Tensor) -> torch.Tensor:
        """What observing each block adds to the first layer's pre-activation (its values and
        its mask bit), blocks × rows × hidden: scoring along an order sums these instead of
        recomputing the first layer from all D inputs per step (the NADE trick, Larochelle &
        Murray 2011)."""
        weight = self.net[0].weight
        n_columns = self.block_of_col.shape[0]
        values = Z.clamp(-INPUT_CLIP, INPUT_CLIP).T
        per_column = values[:, :, None] * weight[:, :n_columns].T[:, None, :]
        mask_bits = weight[:, n_columns : n_columns + self.n_blocks].T[:, None, :]
        return mask_bits.expand(-1, Z.shape[0], -1).index_add(0, self.block_of_col, per_column)

    def conditionals(self, pre: torch.Tensor) -> torch.Tensor:
        """Raw parameters (rows × outputs, laid out as ``forward``'s) of every block's
        conditional, block b's from its own first-layer pre-activation ``pre[b]`` (blocks ×
        rows × hidden): one pass of the hidden layers over all blocks, then each block's rows
        of the output layer only."""
        hidden = self.net[1:-1](pre.float())
        out, n = self.net[-1], pre.shape[1]
        parts = []
        if self.numeric:
            width = 3 * self.components * len(self.numeric)
            weight = out.weight[:width].view(len(self.numeric), -1, out.weight.shape[1])
            bias = out.bias[:width].view(len(self.numeric), 1, -1)
            numeric = torch.baddbmm(bias, hidden[self.numeric_rows], weight.transpose(1, 2))
            parts.append(numeric.transpose(0, 1).reshape(n, width))
        for i, _, _ in self.categorical:
            part = self.block_slices[i]
            parts.append(nn.functional.linear(hidden[i], out.weight[part], out.bias[part]))
        return torch.cat(parts, dim=1)

    def _mixture(
        self, raw: torch.Tensor, dtype: torch.dtype = torch.float64
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = 3 * self.components * len(self.numeric)
        params = raw[:, :k].to(dtype).view(raw.shape[0], len(self.numeric), 3, self.components)
        return _split_mixture(params)

    def _category_logits(
        self, raw: torch.Tensor, dtype: torch.dtype = torch.float64
    ) -> list[torch.Tensor]:
        return [raw[:, self.block_slices[i]].to(dtype) for i, _, _ in self.categorical]

    def block_log_probs(
        self, raw: torch.Tensor, Z: torch.Tensor, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """log p of each feature's value in Z under the conditionals ``raw`` (rows × blocks;
        numeric terms are densities in standardised units). Scoring uses float64, so values
        astronomically far from the data keep a finite log-density; training uses float32."""
        out = torch.empty(raw.shape[0], self.n_blocks, dtype=dtype)
        if self.numeric and not self.lattice:
            z = Z[:, self.numeric].to(dtype)[..., None]
            out[:, self.numeric_blocks] = _mixture_log_pdf(z, *self._mixture(raw, dtype))
        elif self.numeric:  # densities of the continuous features, masses of the lattice ones
            z = Z[:, self.numeric].to(dtype)[..., None]
            mixture = self._mixture(raw, dtype)
            smooth, lattice = self.smooth, self.lattice
            blocks = torch.tensor(self.numeric_blocks)
            if smooth:
                out[:, blocks[smooth]] = _mixture_log_pdf(
                    z[:, smooth], *(p[:, smooth] for p in mixture)
                )
            half = self.steps[lattice][:, None] / 2
            cell = _mixture_log_cell(z[:, lattice], half, *(p[:, lattice] for p in mixture))
            out[:, blocks[lattice]] = cell.to(dtype)
        for (i, start, stop), logits in zip(
            self.categorical, self._category_logits(raw, dtype), strict=True
        ):
            out[:, i] = _category_log_prob(logits, Z[:, start:stop])
        return out

    def snap(self, values: torch.Tensor) -> torch.Tensor:
        """Values of the lattice features (rows × lattice features, standardised) moved to
        their nearest lattice point."""
        step, origin = self.steps[self.lattice], self.origins[self.lattice]
        snapped = origin + torch.round((values.double() - origin) / step) * step
        return snapped.to(values.dtype)

    def sample_blocks(self, raw: torch.Tensor) -> torch.Tensor:
        """One draw of every feature from its conditional (rows × columns, standardised)."""
        n = raw.shape[0]
        out = torch.zeros(n, len(self.block_of_col), dtype=torch.float64)
        if self.numeric:
            log_w, mean, log_std = self._mixture(raw)
            pick = torch.distributions.Categorical(logits=log_w).sample()[..., None]
            eps = torch.randn(mean.shape[:2], dtype=torch.float64)
            chosen_mean = mean.gather(-1, pick)[..., 0]
            out[:, self.numeric] = chosen_mean + log_std.gather(-1, pick)[..., 0].exp() * eps
            # a lattice feature's cell drawn by its mass: the draw's nearest lattice point
            out[:, self.lattice_columns] = self.snap(out[:, self.lattice_columns])
        for (_, start, _stop), logits in zip(
            self.categorical, self._category_logits(raw), strict=True
        ):
            code = torch.distributions.Categorical(logits=logits).sample()
            out[torch.arange(n), start + code] = 1.0
        return out


class Autoregressive(TorchDensity):
    """Order-agnostic autoregressive density over mixed numeric/categorical features.

    Parameters
    ----------
    hidden : non-empty list of int ≥ 1
        Hidden layer widths of the conditional network.
    components : int ≥ 1
        Gaussians in each numeric feature's conditional mixture.
    orders : int ≥ 1
        Feature orders whose densities ``log_prob`` averages (the natural one first).
    smoothing : float ≥ 0
        Training jitter of the numeric columns in units of Scott's factor (0: none); lattice
        columns' jittered values are rounded to their lattice.
    **train
        The training parameters of :class:`~anomaly.models.torch_density.TorchDensity`
        (``seed``, ``max_epochs``, ``batch_size``, ``learning_rate``, ``patience``,
        ``n_threads``, …; this kind has its own defaults for those it names).

    Attributes
    ----------
    module_ : ARModule
        The trained conditional network; also those of ``TorchDensity``.
    smoothing_std_ : float
        The jitter's standard deviation used (standardised units).
    cell_masses_ : bool
        Whether lattice columns get exact cell masses (True for every model fitted now; False
        for models saved before, whose lattice columns are dequantised by the base class).

    Examples
    --------
    >>> import numpy as np
    >>> from anomaly.models import create
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> model = create("autoregressive", hidden=(8,), components=2, max_epochs=2, progress=False)
    >>> model.fit(X).log_prob(X[:4]).shape, model.feature_log_probs(X[:4]).shape
    ((4,), (4, 2))
    """

    kind = "autoregressive"
    explanation = "conditional"
    supports_context = True
    sequential_sampling = True
    native_categories = True
    parameter_constraints: ClassVar[Table] = {
        "hidden": [SequenceOf(Interval(Integral, 1, None))],
        "components": [Interval(Integral, 1, None)],
        "orders": [Interval(Integral, 1, None)],
        "smoothing": [Interval(Real, 0, None)],
    }

    def __init__(
        self,
        seed: int = 0,
        hidden: tuple[int, ...] = (128, 128),
        components: int = 16,
        orders: int = 2,
        smoothing: float = 1.0,
        max_epochs: int = 150,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        patience: int = 20,
        n_threads: int | None = 1,
        **train: Any,
    ) -> None:
        # one thread by default: the network is small, and extra threads mostly wait on each
        # other (badly so when the cores are shared)
        super().__init__(
            seed,
            max_epochs=max_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            patience=patience,
            n_threads=n_threads,
            **train,
        )
        self.hidden = hidden
        self.components = components
        self.orders = orders
        self.smoothing = smoothing

    # ------------------------------------------------------------------ TorchDensity hooks
    def _scaling(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Standardise numeric columns only: one-hot blocks stay 0/1."""
        mean, scale = super()._scaling(X)
        for block in self.layout_:
            if block.categorical:
                mean[block.start : block.stop], scale[block.start : block.stop] = 0.0, 1.0
        return mean, scale

    @property
    def exact_cells(self) -> bool:  # type: ignore[override]
        """Whether lattice features get exact cell masses (every model fitted since issue 16,
        item 2) rather than the base class's dequantisation (models saved before)."""
        return getattr(self, "cell_masses_", True)

    def _fit(self, X: np.ndarray, context: np.ndarray | None = None) -> None:
        # Scott's factor n^(−1/(d+4)) in standard deviations, as for a kernel density estimate
        scott = X.shape[0] ** (-1.0 / (len(self.layout_) + 4))
        self.smoothing_std_ = float(self.smoothing * scott)
        self.cell_masses_ = True
        super()._fit(X, context)

    def _fitted_json(self) -> dict[str, Any]:
        return {
            **super()._fitted_json(),
            "smoothing_std": self.smoothing_std_,
            "cell_masses": self.cell_masses_,
        }

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        # absent before exact cell masses: lattice columns were dequantised
        self.cell_masses_ = fitted.get("cell_masses", False)
        super()._load_state(state, fitted)
        self.smoothing_std_ = fitted.get("smoothing_std", 0.0)  # absent before smoothing

    def _lattice_widths(self) -> np.ndarray:
        """Per column, the cell width the network gives a mass (0: a density or a category)."""
        widths = getattr(self, "cell_widths_", None)
        if widths is None or not self.cell_masses_:
            return np.zeros(self.n_features_in_)
        return widths

    def _build(self, dim: int) -> nn.Module:
        n_blocks = len(self.layout_)
        generator = torch.Generator().manual_seed(self.seed)
        orders = [torch.arange(n_blocks)] + [
            torch.randperm(n_blocks, generator=generator) for _ in range(self.orders - 1)
        ]
        numeric = [b.start for b in self.layout_ if not b.categorical]
        steps = (self._lattice_widths() / self.scale_)[numeric]
        origins = ((getattr(self, "cell_origins_", 0.0) - self.mean_) / self.scale_)[numeric]
        return ARModule(
            self.layout_,
            self.n_context_,
            tuple(self.hidden),
            self.components,
            torch.stack(orders),
            torch.from_numpy(steps),
            torch.from_numpy(np.where(steps > 0, origins, 0.0)),
        )

    def _loss(
        self, module: nn.Module, batch: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        n, blocks = batch.shape[0], module.n_blocks
        if self.smoothing_std_ > 0:  # fit the density smoothed by N(0, std²) on numeric columns
            batch = batch.clone()
            batch[:, module.numeric] += self.smoothing_std_ * torch.randn(n, len(module.numeric))
            # on a lattice feature, the jittered value's nearest lattice point: the pmf
            # smoothed by a discrete Gaussian kernel, as `kde` smooths lattice columns
            batch[:, module.lattice_columns] = module.snap(batch[:, module.lattice_columns])
        k = torch.randint(0, blocks, (n, 1))  # features observed in this row's random order
        rank = torch.rand(n, blocks).argsort(dim=1).argsort(dim=1)
        mask = (rank < k).float()
        lp = module.block_log_probs(module(batch, mask, context), batch, torch.float32)
        per_row = ((1 - mask) * lp).sum(dim=1) * blocks / (blocks - k[:, 0])
        return -per_row.mean()

    def _log_prob(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        # a lattice feature's term is a mass: no standardisation Jacobian (the base subtracts
        # log scale for every column)
        widths = self._lattice_widths()
        return super()._log_prob(X, context) + np.log(self.scale_[widths > 0]).sum()

    def _sample(
        self, n: int, rng: np.random.Generator, context: np.ndarray | None = None
    ) -> np.ndarray:
        return self._on_lattice(super()._sample(n, rng, context))

    def _on_lattice(self, values: np.ndarray) -> np.ndarray:
        """Rows in X's units with the lattice features' values put back on their lattice
        exactly (undoing the rounding error of the standardisation)."""
        widths = self._lattice_widths()
        lattice = widths > 0
        origins, steps = self.cell_origins_[lattice], widths[lattice]
        values[:, lattice] = origins + np.round((values[:, lattice] - origins) / steps) * steps
        return values

    def _module_log_prob(
        self, module: nn.Module, Z: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        rows = max(1, PASS_CELLS // module.n_blocks)
        parts = [self._pass_log_prob(module, z, c) for z, c in _split(Z, context, rows)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def _pass_log_prob(
        self, module: nn.Module, Z: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        nothing = torch.zeros(Z.shape[0], module.n_blocks)
        start = module.input_layer(Z, nothing, context).double()
        inputs = module.block_inputs(Z)
        pre = torch.empty_like(inputs)
        per_order = []
        for order in module.orders.tolist():
            # before its turn, a block sees the blocks earlier in the order: the first layer's
            # pre-activation is the running sum (float64) of what each of them adds
            running = start.clone()
            for block in order:
                pre[block] = running
                running += inputs[block]
            lp = module.block_log_probs(module.conditionals(pre), Z)
            per_order.append(lp.sum(dim=1))
        return torch.logsumexp(torch.stack(per_order), dim=0) - math.log(len(per_order))

    def _module_sample(
        self, module: nn.Module, n: int, context: torch.Tensor | None
    ) -> torch.Tensor:
        # a draw from the mixture over orders: each row picks an order, then samples along it
        orders = module.orders[torch.randint(0, module.orders.shape[0], (n,))]
        Z = torch.zeros(n, module.block_of_col.shape[0])
        mask = torch.zeros(n, module.n_blocks)
        rows = torch.arange(n)
        for step in range(module.n_blocks):
            draw = module.sample_blocks(module(Z, mask, context)).float()
            target = orders[:, step]
            columns = (module.block_of_col[None] == target[:, None]).float()
            Z = Z * (1 - columns) + draw * columns
            mask[rows, target] = 1.0
        return Z

    # ------------------------------------------------------------------ explanations
    def _full_conditionals(
        self, X: np.ndarray, context: np.ndarray | None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per chunk of rows: (standardised rows, raw parameters of every block's conditional
        given all the other blocks and the context). The conditional of b does not read x_b:
        its first-layer input is the full row's minus what b adds."""
        Z = torch.from_numpy((X - self.mean_) / self.scale_).float()
        C = self._standard_context(context)
        module = self.module_
        out = []
        with torch.inference_mode():
            for z, c in _split(Z, C, max(1, PASS_CELLS // module.n_blocks)):
                full = module.input_layer(z, torch.ones(z.shape[0], module.n_blocks), c)
                out.append((z, module.conditionals(full - module.block_inputs(z))))
        return out

    def feature_log_probs(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        """Each feature's full conditional log p(x_b | x_-b, context): n_rows × n_blocks.

        Numeric terms are densities in the units of X; categorical terms are probabilities.
        """
        X = self._check_input(X)
        C = self._check_context(context, X.shape[0], "feature_log_probs")
        n_blocks = len(self.layout_)
        with torch.inference_mode():
            lp = [self.module_.block_log_probs(raw, z) for z, raw in self._full_conditionals(X, C)]
        lp = torch.cat(lp).numpy() if lp else np.zeros((0, n_blocks))
        return lp - self._log_scale()

    def _log_scale(self) -> np.ndarray:
        """log of each block's standardisation scale (0 for a one-hot block and a lattice
        feature's mass)."""
        widths = self._lattice_widths()
        return np.array(
            [0.0 if widths[b.start] > 0 else np.log(self.scale_[b.start]) for b in self.layout_]
        )

    def conditional_modes(
        self, X: np.ndarray, context: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per feature b: log p(x_b | x_-b), the log-density at its most likely value given
        x_-b, and that value (one network pass per feature: the conditional of b does not read
        x_b). Numeric modes are searched among the mixture's component means (a lower bound on
        the maximum). Returns (observed n × blocks, best n × blocks, modes n × columns)."""
        X = self._check_input(X)
        C = self._check_context(context, X.shape[0], "conditional_modes")
        module, n_blocks = self.module_, len(self.layout_)
        observed, best, modes = [], [], []
        with torch.inference_mode():
            for z, raw in self._full_conditionals(X, C):
                observed.append(module.block_log_probs(raw, z))
                top = torch.empty(z.shape[0], n_blocks, dtype=torch.float64)
                mode = z.to(torch.float64).clone()
                if module.numeric:
                    log_w, mean, log_std = module._mixture(raw)
                    # each mixture's log-density at each of its component means: candidates last
                    at_means = _mixture_log_pdf(
                        mean[..., None],
                        log_w[..., None, :],
                        mean[..., None, :],
                        log_std[..., None, :],
                    )
                    lp, k = at_means.max(dim=-1)
                    top[:, module.numeric_blocks] = lp
                    mode[:, module.numeric] = mean.gather(-1, k[..., None])[..., 0]
                    if module.lattice:  # the masses of the means' cells, the best of them
                        lattice = module.lattice
                        points = module.snap(mean[:, lattice].transpose(1, 2)).transpose(1, 2)
                        masses = _mixture_log_cell(
                            points[..., None],
                            module.steps[lattice][:, None, None] / 2,
                            log_w[:, lattice, None, :],
                            mean[:, lattice, None, :],
                            log_std[:, lattice, None, :],
                        )
                        lp, k = masses.max(dim=-1)
                        blocks = [module.numeric_blocks[j] for j in lattice]
                        top[:, blocks] = lp
                        mode[:, module.lattice_columns] = points.gather(-1, k[..., None])[..., 0]
                for i, start, stop in module.categorical:
                    logits = raw[:, module.block_slices[i]].to(torch.float64)
                    lp, code = logits.log_softmax(-1).max(dim=-1)
                    top[:, i] = lp + math.log1p(-UNSEEN_PROB)
                    mode[:, start:stop] = 0.0
                    mode[torch.arange(z.shape[0]), start + code] = 1.0
                best.append(top)
                modes.append(mode)
        if not observed:
            empty = np.zeros((0, n_blocks))
            return empty, empty, np.zeros((0, X.shape[1]))
        values = self._on_lattice(torch.cat(modes).numpy() * self.scale_ + self.mean_)
        log_scale = self._log_scale()
        return (
            torch.cat(observed).numpy() - log_scale,
            torch.cat(best).numpy() - log_scale,
            values,
        )
