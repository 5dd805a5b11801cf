"""The training loop shared by the torch density models (``flow``, ``vae``, ``autoregressive``).

A torch kind is a plain ``nn.Module`` plus four hooks; this base class owns the rest: input
standardisation (its Jacobian added to every log-density; context columns are standardised too,
without a Jacobian, as they are conditioned on), the seeded train/validation split,
AdamW with early stopping on the validation log-likelihood and a budget of gradient steps (so a
large table trains in bounded time: more rows mean fewer epochs, not more steps), the progress
bar, threads, and
storage of the state dict as numpy arrays in ``weights.npz`` (no pickle).
"""

from __future__ import annotations

import abc
import copy
from numbers import Integral, Real
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from anomaly.models.base import DensityModel, nonzero_scale
from anomaly.models.constraints import Interval, Table

#: rows per forward pass when scoring: a 2,048-row block of 128-wide activations (1 MB) stays in
#: a core's L2 cache; 8,192 did not (one thread, under load: flow 101,000 → 146,000 rows/s,
#: vae 43,000 → 71,000)
SCORE_BATCH = 2_048
#: early stopping is judged on at most this many held-out rows
MAX_VALIDATION_ROWS = 2_048
#: ``sample`` redraws rows whose float32 draw overflowed (far in a tail: on ADBench musk, 166
#: columns, 8 of 20,000 ``flow`` draws) at most this many times; the density there is ~0, so
#: the redraw changes the distribution by that negligible mass
SAMPLE_REDRAWS = 10


class TorchDensity(DensityModel):
    """Base of the neural kinds: subclasses define the module and its likelihood.

    Parameters
    ----------
    seed : int
        Seeds the initial weights, the train/validation split and the batches.
    max_epochs : int ≥ 1
        Passes over the training rows at the most.
    max_steps : int ≥ 1
        Gradient steps at the most (training stops at the end of the epoch that reaches it).
    batch_size : int ≥ 1
        Rows per gradient step.
    learning_rate : float > 0
        AdamW's learning rate.
    weight_decay : float ≥ 0
        AdamW's weight decay.
    patience : int ≥ 1
        Epochs without a better validation log-likelihood before training stops; the best
        epoch's weights are kept.
    validation_fraction : float in (0, 1)
        Share of the rows held out to judge early stopping (at most 2,048 rows).
    noise : float ≥ 0
        Standard deviation of Gaussian noise added to each training batch (standardised
        units; 0: none).
    n_threads : int ≥ 1 or None
        torch threads while fitting, scoring and sampling (restored afterwards); None: the
        caller's setting.
    progress : bool
        Show a progress bar of the epochs.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network (its best epoch).
    history_ : list of float
        Validation negative log-likelihood per epoch (standardised units).
    epochs_ : int
        Epochs run.
    """

    parameter_constraints: ClassVar[Table] = {
        "max_epochs": [Interval(Integral, 1, None)],
        "max_steps": [Interval(Integral, 1, None)],
        "batch_size": [Interval(Integral, 1, None)],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None)],
        "patience": [Interval(Integral, 1, None)],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "noise": [Interval(Real, 0, None)],
        "n_threads": [Interval(Integral, 1, None), None],
        "progress": [bool],
    }

    def __init__(
        self,
        seed: int = 0,
        max_epochs: int = 200,
        max_steps: int = 4_000,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 1e-5,
        patience: int = 15,
        validation_fraction: float = 0.1,
        noise: float = 0.0,
        n_threads: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__(seed)
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.noise = noise
        self.n_threads = n_threads
        self.progress = progress

    # ------------------------------------------------------------------ hooks
    @abc.abstractmethod
    def _build(self, dim: int) -> nn.Module:
        """A fresh module for ``dim`` standardised features (and ``self.n_context_`` context
        columns, for kinds that support context)."""

    @abc.abstractmethod
    def _loss(
        self, module: nn.Module, batch: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        """Mean training loss (negative log-likelihood or a bound on it) of a batch."""

    @abc.abstractmethod
    def _module_log_prob(
        self, module: nn.Module, Z: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        """log-density of standardised rows (given their standardised context rows)."""

    @abc.abstractmethod
    def _module_sample(
        self, module: nn.Module, n: int, context: torch.Tensor | None
    ) -> torch.Tensor:
        """``n`` standardised rows (the caller seeds torch)."""

    def _scaling(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-column location and scale of the standardisation (default: mean and std)."""
        std = X.std(axis=0)
        return X.mean(axis=0), nonzero_scale(std)

    # ------------------------------------------------------------------ training loop
    def _fit(self, X: np.ndarray, context: np.ndarray | None = None) -> None:
        with torch.random.fork_rng():  # seed training without touching the caller's RNG
            self._train(X, context)

    def _standard_context(self, context: np.ndarray | None) -> torch.Tensor | None:
        if context is None:
            return None
        return torch.from_numpy((context - self.context_mean_) / self.context_scale_).float()

    def _train(self, X: np.ndarray, context: np.ndarray | None) -> None:
        torch.manual_seed(self.seed)
        self.mean_, self.scale_ = self._scaling(X)
        Z = torch.from_numpy((X - self.mean_) / self.scale_).float()
        if context is not None:
            std = context.std(axis=0)
            self.context_mean_, self.context_scale_ = (
                context.mean(axis=0),
                nonzero_scale(std),
            )
        C = self._standard_context(context)
        order = torch.randperm(Z.shape[0], generator=torch.Generator().manual_seed(self.seed))
        n_val = min(max(1, round(self.validation_fraction * Z.shape[0])), MAX_VALIDATION_ROWS)
        train, val = Z[order[n_val:]], Z[order[:n_val]]
        train_c, val_c = (None, None) if C is None else (C[order[n_val:]], C[order[:n_val]])
        self.module_ = self._build(Z.shape[1])
        optimiser = torch.optim.AdamW(
            self.module_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        best, best_state, waited, steps = np.inf, None, 0, 0
        self.history_: list[float] = []
        bar = tqdm(
            range(self.max_epochs),
            desc=f"fit {self.kind}",
            unit="epoch",
            disable=None if self.progress else True,
            leave=False,
        )
        for _ in bar:
            self.module_.train()
            for idx in torch.randperm(train.shape[0]).split(self.batch_size):
                batch = train[idx]
                if self.noise > 0:
                    batch = batch + self.noise * torch.randn_like(batch)
                loss = self._loss(self.module_, batch, None if train_c is None else train_c[idx])
                optimiser.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.module_.parameters(), 10.0)
                optimiser.step()
                steps += 1
            val_loss = self._validation_loss(val, val_c)
            self.history_.append(val_loss)
            bar.set_postfix(val_nll=f"{val_loss:.3f}")
            if val_loss < best - 1e-4:
                best, best_state, waited = val_loss, copy.deepcopy(self.module_.state_dict()), 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
            if steps >= self.max_steps:
                break
        bar.close()
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        self.module_.eval()
        self.epochs_ = len(self.history_)

    def _validation_loss(self, val: torch.Tensor, val_c: torch.Tensor | None) -> float:
        """Held-out negative log-likelihood (what the model is scored by, not the loss)."""
        self.module_.eval()
        with torch.inference_mode():
            lp = [
                self._module_log_prob(self.module_, b, c).sum().item()
                for b, c in _split(val, val_c, 4096)
            ]
        value = -sum(lp) / val.shape[0]
        return value if np.isfinite(value) else np.inf

    # ------------------------------------------------------------------ scoring
    def _log_prob(self, X: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        Z = torch.from_numpy((X - self.mean_) / self.scale_).float()
        C = self._standard_context(context)
        with torch.inference_mode():
            lp = [
                self._module_log_prob(self.module_, b, c).double()
                for b, c in _split(Z, C, SCORE_BATCH)
            ]
        return torch.cat(lp).numpy() - np.log(self.scale_).sum()

    def _sample(
        self, n: int, rng: np.random.Generator, context: np.ndarray | None = None
    ) -> np.ndarray:
        with torch.random.fork_rng(), torch.inference_mode():
            torch.manual_seed(int(rng.integers(2**31)))
            C = self._standard_context(context)
            Z = self._module_sample(self.module_, n, C).double().numpy()
            for _ in range(SAMPLE_REDRAWS):  # a float32 draw far in the tails can overflow
                bad = np.flatnonzero(~np.isfinite(Z).all(axis=1))
                if len(bad) == 0:
                    break
                rows = torch.as_tensor(bad)
                again = self._module_sample(self.module_, len(bad), None if C is None else C[rows])
                Z[bad] = again.double().numpy()
        if not np.isfinite(Z).all():
            msg = f"{self.kind}: sampling overflowed float32 {SAMPLE_REDRAWS} times in a row"
            raise RuntimeError(msg)
        return Z * self.scale_ + self.mean_

    # ------------------------------------------------------------------ storage
    def _state(self) -> dict[str, np.ndarray]:
        state = {f"module.{k}": v.detach().numpy() for k, v in self.module_.state_dict().items()}
        if self.n_context_:
            state |= {"context_mean": self.context_mean_, "context_scale": self.context_scale_}
        return {"mean": self.mean_, "scale": self.scale_, **state}

    def _fitted_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs_, "history": self.history_}

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        self.mean_, self.scale_ = state["mean"], state["scale"]
        if "context_mean" in state:
            self.context_mean_, self.context_scale_ = state["context_mean"], state["context_scale"]
        self.module_ = self._build(self.mean_.shape[0])
        weights = {
            k.removeprefix("module."): torch.from_numpy(v)
            for k, v in state.items()
            if k.startswith("module.")
        }
        self.module_.load_state_dict(weights)
        self.module_.eval()
        self.epochs_, self.history_ = fitted["epochs"], fitted["history"]


def _split(
    Z: torch.Tensor, C: torch.Tensor | None, size: int
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Row chunks of Z paired with the same rows of C (or None)."""
    chunks = Z.split(size)
    return list(zip(chunks, C.split(size) if C is not None else [None] * len(chunks), strict=True))
