"""The training loop shared by the torch density models (``flow``, ``vae``).

A torch kind is a plain ``nn.Module`` plus four hooks; this base class owns the rest: input
standardisation (its Jacobian added to every log-density), the seeded train/validation split,
AdamW with early stopping on the validation log-likelihood, the progress bar, threads, and
storage of the state dict as numpy arrays in ``weights.npz`` (no pickle).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from anomaly.models.base import DensityModel, check_positive

#: rows per forward pass when scoring
SCORE_BATCH = 8_192


class TorchDensity(DensityModel):
    """Base of the neural kinds: subclasses define the module and its likelihood."""

    def __init__(
        self,
        seed: int = 0,
        max_epochs: int = 200,
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
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.noise = noise
        self.n_threads = n_threads
        self.progress = progress

    # ------------------------------------------------------------------ hooks
    def _build(self, dim: int) -> nn.Module:
        """A fresh module for ``dim`` standardised features."""
        raise NotImplementedError

    def _loss(self, module: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Mean training loss (negative log-likelihood or a bound on it) of a batch."""
        raise NotImplementedError

    def _module_log_prob(self, module: nn.Module, Z: torch.Tensor) -> torch.Tensor:
        """log-density of standardised rows."""
        raise NotImplementedError

    def _module_sample(self, module: nn.Module, n: int) -> torch.Tensor:
        """``n`` standardised rows (the caller seeds torch)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training loop
    def _fit(self, X: np.ndarray) -> None:
        with torch.random.fork_rng():  # seed training without touching the caller's RNG
            self._train(X)

    def _train(self, X: np.ndarray) -> None:
        for name in ("max_epochs", "batch_size", "learning_rate", "patience"):
            check_positive(name, getattr(self, name), self.kind)
        if not 0 < self.validation_fraction < 1:
            msg = (
                f"{self.kind}: validation_fraction must be in (0, 1), "
                f"got {self.validation_fraction}"
            )
            raise ValueError(msg)
        torch.manual_seed(self.seed)
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        Z = torch.from_numpy((X - self.mean_) / self.scale_).float()
        order = torch.randperm(Z.shape[0], generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, round(self.validation_fraction * Z.shape[0]))
        train, val = Z[order[n_val:]], Z[order[:n_val]]
        self.module_ = self._build(Z.shape[1])
        optimiser = torch.optim.AdamW(
            self.module_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        best, best_state, waited = np.inf, None, 0
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
                loss = self._loss(self.module_, batch)
                optimiser.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.module_.parameters(), 10.0)
                optimiser.step()
            val_loss = self._validation_loss(val)
            self.history_.append(val_loss)
            bar.set_postfix(val_nll=f"{val_loss:.3f}")
            if val_loss < best - 1e-4:
                best, best_state, waited = val_loss, copy.deepcopy(self.module_.state_dict()), 0
            else:
                waited += 1
                if waited >= self.patience:
                    break
        bar.close()
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        self.module_.eval()
        self.epochs_ = len(self.history_)

    def _validation_loss(self, val: torch.Tensor) -> float:
        """Held-out negative log-likelihood (what the model is scored by, not the loss)."""
        self.module_.eval()
        with torch.inference_mode():
            lp = [self._module_log_prob(self.module_, b).sum().item() for b in val.split(4096)]
        value = -sum(lp) / val.shape[0]
        return value if np.isfinite(value) else np.inf

    # ------------------------------------------------------------------ scoring
    def _log_prob(self, X: np.ndarray) -> np.ndarray:
        Z = torch.from_numpy((X - self.mean_) / self.scale_).float()
        with torch.inference_mode():
            lp = [self._module_log_prob(self.module_, b).double() for b in Z.split(SCORE_BATCH)]
        return torch.cat(lp).numpy() - np.log(self.scale_).sum()

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        with torch.random.fork_rng(), torch.inference_mode():
            torch.manual_seed(int(rng.integers(2**31)))
            Z = self._module_sample(self.module_, n).double().numpy()
        return Z * self.scale_ + self.mean_

    # ------------------------------------------------------------------ storage
    def _state(self) -> dict[str, np.ndarray]:
        state = {f"module.{k}": v.detach().numpy() for k, v in self.module_.state_dict().items()}
        return {"mean": self.mean_, "scale": self.scale_, **state}

    def _fitted_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs_, "history": self.history_}

    def _load_state(self, state: dict[str, np.ndarray], fitted: dict[str, Any]) -> None:
        self.mean_, self.scale_ = state["mean"], state["scale"]
        self.module_ = self._build(self.mean_.shape[0])
        weights = {
            k.removeprefix("module."): torch.from_numpy(v)
            for k, v in state.items()
            if k.startswith("module.")
        }
        self.module_.load_state_dict(weights)
        self.module_.eval()
        self.epochs_, self.history_ = fitted["epochs"], fitted["history"]
