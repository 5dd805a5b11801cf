"""A detector: the fitted preprocessor, density model and calibrator that score records together.

This is what one registered model version holds. Its saved form is a folder:
``detector.json`` (metadata), ``preprocessing.json``, ``calibration.json``/``.npz`` and
``model/`` (the density model's JSON + numpy weights). Nothing in it is pickled.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly import models
from anomaly.calibration import Calibrator
from anomaly.models import DensityModel
from anomaly.neighbours import NormalIndex
from anomaly.preprocessing import REASON, Preprocessor
from anomaly.schema import SCORE_COLUMNS


@dataclass(frozen=True)
class Scored:
    """Scored rows (id, timestamp, :data:`SCORE_COLUMNS`) and quarantined raw rows."""

    scored: pd.DataFrame
    quarantined: pd.DataFrame

    @property
    def rows_in(self) -> int:
        """Rows scored + rows quarantined: every row that came in."""
        return len(self.scored) + len(self.quarantined)


class Detector:
    """Preprocessor → density model → calibrator."""

    def __init__(
        self,
        preprocessor: Preprocessor,
        model: DensityModel,
        calibrator: Calibrator,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.preprocessor = preprocessor
        self.model = model
        self.calibrator = calibrator
        self.metadata = dict(metadata or {})
        #: training rows for "nearest normal records" (set by training; None: not kept)
        self.neighbours: NormalIndex | None = None

    def log_likelihood(self, df: pd.DataFrame) -> tuple[np.ndarray, Scored]:
        """Raw-space log-likelihood of the valid rows of ``df`` (nats per record)."""
        prepared = self.preprocessor.transform(df)
        ll = self.model.log_prob(prepared.X, context=prepared.context) + prepared.log_det
        return ll, Scored(prepared.scored, prepared.quarantined)

    def score(self, df: pd.DataFrame, flag: bool = True) -> Scored:
        """Score a frame: log-likelihood, conformal p-value and, if ``flag``, the flag rule.

        With ``flag=False`` the ``is_anomaly`` column is left for :meth:`flag` (used when a
        batch is scored in chunks and the rule needs all p-values, as Benjamini–Hochberg does).
        """
        ll, result = self.log_likelihood(df)
        scored = result.scored
        reason = scored.pop(REASON)
        scored["log_likelihood"] = ll
        scored["p_value"] = self.calibrator.p_values(-ll)
        reasons = reason.to_numpy()
        p = scored["p_value"].to_numpy()
        scored["is_anomaly"] = self.flag(p, reasons != "") if flag else reasons != ""
        scored[REASON] = reasons
        return Scored(scored, result.quarantined)

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        """One output row per input row, in input order: the id, :data:`SCORE_COLUMNS` and
        ``quarantined``; quarantined rows have no log-likelihood and say why in ``reason``."""
        result = self.score(df)
        id_col = self.preprocessor.features.id
        out = pd.DataFrame(
            {
                id_col: df[id_col].astype(str).to_numpy() if id_col in df else None,
                "log_likelihood": np.nan,
                "p_value": np.nan,
                "is_anomaly": False,
                REASON: "",
                "quarantined": False,
            },
            index=pd.RangeIndex(len(df)),
        )
        positions = result.scored.index.to_numpy()  # both indexes are positions in df
        for col in SCORE_COLUMNS:
            out.loc[positions, col] = result.scored[col].to_numpy()
        bad = result.quarantined.index.to_numpy()
        out.loc[bad, REASON] = result.quarantined[REASON].to_numpy()
        out.loc[bad, "quarantined"] = True
        return out

    def sample(self, n: int, seed: int = 0, context: dict[str, Any] | None = None) -> pd.DataFrame:
        """``n`` synthetic records in raw feature space; with context columns, ``context``
        gives each one's value and the records are drawn from p(x | context)."""
        pre = self.preprocessor
        C = None if context is None else pre.encode_context(context, n)
        if C is None and pre.features.context:
            msg = f"this detector conditions on {pre.features.context}: give their values"
            raise ValueError(msg)
        frame = pre.inverse_transform(self.model.sample(n, seed=seed, context=C))
        for col, value in (context or {}).items():
            frame[col] = value
        return frame

    def flag(self, p_values: np.ndarray, has_reason: np.ndarray) -> np.ndarray:
        """The calibrated flag rule; rows with a reason (unseen category) are always flagged."""
        return self.calibrator.flag(p_values) | has_reason

    def save(self, directory: str | Path) -> Path:
        """Write the detector to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.preprocessor.save(directory)
        self.calibrator.save(directory)
        self.model.save(directory / "model")
        if self.neighbours is not None:
            self.neighbours.save(directory)
        meta = {**self.metadata, "feature_names": self.preprocessor.feature_names_}
        (directory / "detector.json").write_text(json.dumps(meta, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Detector:
        """Read a detector written by :meth:`save` (no pickle)."""
        directory = Path(directory)
        if not (directory / "detector.json").is_file():
            msg = f"no saved detector in {directory}: detector.json is missing"
            raise FileNotFoundError(msg)
        try:
            detector = cls(
                Preprocessor.load(directory),
                models.load(directory / "model"),
                Calibrator.load(directory),
                json.loads((directory / "detector.json").read_text()),
            )
            detector.neighbours = NormalIndex.load(directory)
            return detector
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            msg = f"refusing to load the detector in {directory}: a .json file is not JSON text"
            raise ValueError(msg) from exc
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # not worth a retry
            msg = f"cannot load the detector in {directory}: a weights file is truncated or corrupt"
            raise ValueError(msg) from exc
        except ValueError as exc:
            if "pickle" not in str(exc):
                raise
            msg = (
                f"refusing to load the detector in {directory}: a weights file holds pickled "
                "data, which is never loaded (weights are plain numpy arrays)"
            )
            raise ValueError(msg) from exc
