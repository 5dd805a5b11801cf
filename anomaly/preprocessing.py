"""From a raw table to the model's matrix: validation, quarantine, transforms and their Jacobian.

Numeric columns are (optionally) log-transformed and standardised; categorical columns are
one-hot encoded. Log-likelihoods are reported in the raw feature space: the log-determinant of
the numeric transform's Jacobian is returned per row, to be added to the model's log-density.

A numeric column whose training values lie on a lattice (every gap a whole multiple of the
smallest) and repeat (at most 1,000 levels, at most one per two rows), e.g. integer counts, is
*discrete*: it is standardised
without the log transform, its layout block carries the lattice step in model units, and the
model reports the probability of the value's cell (``anomaly.models.base``), which needs no
Jacobian. Raw log-likelihoods are then log-probabilities for the discrete columns and
log-densities for the continuous ones, whatever the kind.

Context columns (``features.context``) are conditioned on, not judged: they go to a separate
matrix (``Prepared.context``) and the model scores log p(x | context), with no Jacobian for
them. A context column whose training values have a numeric dtype is standardised (no log
transform); any other is one-hot encoded. Missing or non-numeric context values quarantine the
row like other columns; an unseen context category is scored (all-zero one-hot) and noted.

A row is either scored or quarantined with a reason; a frame whose schema is wrong raises
:class:`SchemaError`. An unseen category is not a reason to quarantine: the row is scored (its
one-hot block is all zeros) and the category is reported as a reason for suspicion.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.types import is_object_dtype, is_string_dtype

from anomaly.config import Features
from anomaly.models.base import Block, lattice_step
from anomaly.schema import record_columns

#: longest record id the store keeps (its id columns are 300 characters wide)
MAX_ID_LENGTH = 256
#: standardised values are clipped to ±CLIP so astronomically large inputs stay finite
CLIP = 1e4
REASON = "reason"
#: valid rows ``fit`` needs (a scale needs two)
MIN_TRAINING_ROWS = 2


class SchemaError(ValueError):
    """A whole batch cannot be read with the feature spec (missing or duplicated columns)."""


@dataclass(frozen=True)
class Prepared:
    """The result of :meth:`Preprocessor.transform`."""

    X: np.ndarray  #: model matrix of the scored rows
    log_det: np.ndarray  #: log |d transform / dx| per scored row
    #: id (and timestamp) of scored rows, with a ``reason`` ("" or a note); index = position in df
    scored: pd.DataFrame
    #: the raw quarantined rows with a ``reason`` column; index = position in df
    quarantined: pd.DataFrame
    #: context matrix of the scored rows (None when the spec names no context columns)
    context: np.ndarray | None = None


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


class Preprocessor:
    """Feature spec → model matrix, fitted on training rows only."""

    def __init__(self, features: Features) -> None:
        self.features = features

    # ------------------------------------------------------------------ fit
    def fit(self, df: pd.DataFrame) -> Self:
        """Learn transforms, scales and categories from training rows."""
        _check_frame(df)
        self.check_schema(list(df.columns), "training data")
        self.context_kinds_ = {
            col: "numeric"
            if pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])
            else "categorical"
            for col in self.features.context
        }
        prepared = self._validate(df)
        good = prepared.loc[prepared[REASON] == ""]
        if len(good) < MIN_TRAINING_ROWS:
            reasons = prepared[REASON].loc[prepared[REASON] != ""].value_counts().head(3)
            msg = (
                f"no valid training rows: {len(prepared) - len(good)} of {len(prepared)} were "
                f"quarantined, leaving {len(good)} (at least {MIN_TRAINING_ROWS} needed); most "
                "common reasons: "
                + "; ".join(f"{reason} ({n} rows)" for reason, n in reasons.items())
                + "; check the data and spec"
            )
            raise ValueError(msg)
        self.transforms_: dict[str, str] = {}
        self.means_: dict[str, float] = {}
        self.scales_: dict[str, float] = {}
        self.steps_: dict[str, float] = {}
        self.origins_: dict[str, float] = {}
        for col in self.features.numeric:
            x = good[col].to_numpy(np.float64)
            skew = pd.Series(x).skew() if len(x) > 2 else 0.0
            step = lattice_step(x, max_share=0.5)  # a lattice whose values repeat
            if step:
                self.steps_[col], self.origins_[col] = step, float(x.min())
            auto_log = self.features.numeric_transform == "auto" and not step
            use_log = auto_log and x.min() >= 0 and skew > 1.0
            self.transforms_[col] = "signed_log" if use_log else "none"
            t = _signed_log(x) if use_log else x
            self.means_[col] = float(t.mean())
            self.scales_[col] = float(t.std()) or 1.0
        self.categories_: dict[str, list[str]] = {
            col: sorted(good[col].astype(str).unique()) for col in self.features.categorical
        }
        self.context_means_: dict[str, float] = {}
        self.context_scales_: dict[str, float] = {}
        self.context_categories_: dict[str, list[str]] = {}
        for col, kind in self.context_kinds_.items():
            if kind == "numeric":
                x = good[col].to_numpy(np.float64)
                self.context_means_[col] = float(x.mean())
                self.context_scales_[col] = float(x.std()) or 1.0
            else:
                self.context_categories_[col] = sorted(good[col].astype(str).unique())
        return self

    @property
    def feature_names_(self) -> list[str]:
        """Names of the model matrix's columns."""
        self._check_fitted()
        onehot = [f"{c}={v}" for c, cats in self.categories_.items() for v in cats]
        return [*self.features.numeric, *onehot]

    @property
    def context_names_(self) -> list[str]:
        """Names of the context matrix's columns (numeric context columns, then one-hots)."""
        self._check_fitted()
        numeric = [c for c, kind in self.context_kinds_.items() if kind == "numeric"]
        onehot = [f"{c}={v}" for c, cats in self.context_categories_.items() for v in cats]
        return [*numeric, *onehot]

    @property
    def layout_(self) -> list[Block]:
        """Which model-matrix columns belong to which raw feature (numerics, then one-hots)."""
        self._check_fitted()
        blocks = [
            Block(col, j, j + 1, step=self.steps_.get(col, 0.0) / self.scales_[col])
            for j, col in enumerate(self.features.numeric)
        ]
        start = len(blocks)
        for col, cats in self.categories_.items():
            blocks.append(Block(col, start, start + len(cats), categorical=True))
            start += len(cats)
        return blocks

    # ------------------------------------------------------------------ transform
    def transform(self, df: pd.DataFrame) -> Prepared:
        """Validate ``df``, quarantine bad rows, and encode the rest."""
        self._check_fitted()
        checked = self._validate(df)
        bad = checked[REASON] != ""
        positions = np.flatnonzero(bad)
        quarantined = df.iloc[positions].set_axis(positions)  # index = position in df
        quarantined[REASON] = checked.loc[bad, REASON].to_numpy()
        good = checked.loc[~bad] if len(positions) else checked
        n = len(good)
        blocks, log_det = [], np.zeros(n)
        for col in self.features.numeric:
            x = good[col].to_numpy(np.float64)
            if self.transforms_[col] == "signed_log":
                log_det -= np.log1p(np.abs(x))
                x = _signed_log(x)
            if col not in self.steps_:  # a discrete column's cell probability needs no Jacobian
                log_det -= np.log(self.scales_[col])
            blocks.append(np.clip((x - self.means_[col]) / self.scales_[col], -CLIP, CLIP))
        notes = pd.Series([""] * n, index=good.index, dtype=object)
        for col, cats in self.categories_.items():
            values = good[col].astype(str)
            codes = pd.Index(cats).get_indexer(values)
            blocks.extend((codes == i).astype(np.float64) for i in range(len(cats)))
            unseen = codes < 0
            if unseen.any():
                note = f"unseen category in {col}: " + _text(values[unseen])
                notes[unseen] = (notes[unseen] + "; " + note).str.lstrip("; ")
        X = np.column_stack(blocks) if blocks else np.zeros((n, 0))
        context = None
        if self.features.context:
            context, unseen_notes = self._encode_context(good)
            for note in unseen_notes:
                notes[note != ""] = (notes[note != ""] + "; " + note[note != ""]).str.lstrip("; ")
        keep = [self.features.id] + ([self.features.timestamp] if self.features.timestamp else [])
        scored = good[keep].copy()
        scored[REASON] = notes.to_numpy()
        return Prepared(
            X=X, log_det=log_det, scored=scored, quarantined=quarantined, context=context
        )

    def _encode_context(self, good: pd.DataFrame) -> tuple[np.ndarray, list[pd.Series]]:
        """Context matrix of validated rows and, per categorical column, unseen-value notes."""
        columns, notes = [], []
        for col, kind in self.context_kinds_.items():
            if kind == "numeric":
                x = good[col].to_numpy(np.float64)
                z = (x - self.context_means_[col]) / self.context_scales_[col]
                columns.append(np.clip(z, -CLIP, CLIP))
        for col, cats in self.context_categories_.items():
            values = good[col].astype(str)
            codes = pd.Index(cats).get_indexer(values)
            columns.extend((codes == i).astype(np.float64) for i in range(len(cats)))
            note = pd.Series("", index=good.index, dtype=object)
            note[codes < 0] = f"unseen category in context {col}: " + _text(values[codes < 0])
            notes.append(note)
        return np.column_stack(columns), notes

    def encode_context(self, values: dict[str, Any], n: int) -> np.ndarray:
        """The context matrix of ``n`` rows that all have the given context ``values``
        (one per context column; for generating records in a given context)."""
        self._check_fitted()
        names = list(self.context_kinds_)
        if not names:
            msg = "the feature spec names no context columns (features.context)"
            raise ValueError(msg)
        unknown = sorted(set(values) - set(names))
        missing = [c for c in names if c not in values]
        if unknown or missing:
            msg = f"give a value for each context column {names}"
            msg += f"; unknown: {unknown}" if unknown else ""
            msg += f"; missing: {missing}" if missing else ""
            raise ValueError(msg)
        frame = pd.DataFrame(index=range(n))
        for col, kind in self.context_kinds_.items():
            value = values[col]
            if kind == "numeric":
                number = _to_float(pd.Series([value])).iloc[0]
                if not np.isfinite(number):
                    msg = f"context {col} is numeric; got {value!r}"
                    raise ValueError(msg)
                frame[col] = number
            else:
                if str(value) not in self.context_categories_[col]:
                    msg = (
                        f"context {col}={value!r} was not seen in training; "
                        f"known: {self.context_categories_[col]}"
                    )
                    raise ValueError(msg)
                frame[col] = str(value)
        return self._encode_context(frame)[0].reshape(n, len(self.context_names_))

    def inverse_transform(self, X: np.ndarray) -> pd.DataFrame:
        """Model-space rows (e.g. samples) back to raw feature values; one-hot → most likely."""
        self._check_fitted()
        out: dict[str, Any] = {}
        for j, col in enumerate(self.features.numeric):
            t = X[:, j] * self.scales_[col] + self.means_[col]
            if self.transforms_[col] == "signed_log":
                t = np.sign(t) * np.expm1(np.abs(t))
            if col in self.steps_:  # back onto the lattice of the training values
                step, origin = self.steps_[col], self.origins_[col]
                t = origin + np.round((t - origin) / step) * step
            out[col] = t
        start = len(self.features.numeric)
        for col, cats in self.categories_.items():
            block = X[:, start : start + len(cats)]
            out[col] = np.asarray(cats, dtype=object)[block.argmax(axis=1)]
            start += len(cats)
        return pd.DataFrame(out)

    # ------------------------------------------------------------------ validation
    def check_schema(self, columns: list[str], what: str = "batch") -> None:
        """Raise :class:`SchemaError` unless every required column is present exactly once
        (``what``: how the message names the rows' source)."""
        required = record_columns(self.features)
        dupes = sorted({str(c) for c in columns if list(columns).count(c) > 1})
        if dupes:
            msg = f"{what} has duplicated column names: {dupes}"
            raise SchemaError(msg)
        names = [str(c) for c in columns]
        missing = [c for c in required if c not in names]
        if missing:
            hints = []
            for col in missing:
                close = difflib.get_close_matches(col, names, n=1)
                hints.append(f"{col!r}" + (f" (found {close[0]!r}?)" if close else ""))
            msg = (
                f"{what} is missing required column(s) {', '.join(hints)}; "
                f"it has {len(names)} column(s): {names[:20]}"
            )
            raise SchemaError(msg)

    def _validate(self, df: pd.DataFrame) -> pd.DataFrame:
        """The required columns, numerics coerced, with a per-row ``reason`` ("" = valid)."""
        _check_frame(df)
        self.check_schema(list(df.columns))
        df = df.reset_index(drop=True)
        f = self.features
        out: dict[str, Any] = {}  # the columns, in order; one frame is built at the end
        reasons = pd.Series([""] * len(df), index=df.index, dtype=object)

        def add(mask: pd.Series | np.ndarray, text: str | pd.Series) -> None:
            mask = np.asarray(mask, dtype=bool)
            if mask.any():  # reasons are built for the bad rows only
                mask = pd.Series(mask, index=df.index)
                # a Series of texts may hold only the masked rows (texts are built for those)
                piece = text.reindex(mask.index[mask]) if isinstance(text, pd.Series) else text
                reasons[mask] = (reasons[mask] + "; " + piece).str.lstrip("; ")

        ids = df[f.id]
        id_text = ids.astype(str)
        missing_id = ids.isna()
        out[f.id] = id_text.where(~missing_id, None)
        if is_object_dtype(ids) or is_string_dtype(ids):  # a number's text is never blank
            add(missing_id | (out[f.id].str.strip() == ""), f"missing id ({f.id})")
            too_long = f"id longer than {MAX_ID_LENGTH} characters ({f.id})"
            add(out[f.id].fillna("").str.len() > MAX_ID_LENGTH, too_long)
        else:
            add(missing_id, f"missing id ({f.id})")
        for col in df.columns:  # in any column: a NUL cut dates short; others garble text
            if not (is_object_dtype(df[col]) or is_string_dtype(df[col])):
                continue  # numbers, dates and booleans hold no text
            found = _control_characters(df[col])
            if found.notna().any():
                add(found.notna(), "control character " + found.fillna("") + f" in {col}")
        # integers have one text each: their duplicates are found without the texts
        unique_key = ids if ids.dtype.kind in "iu" else id_text
        dup = ~missing_id & unique_key.duplicated(keep="first")
        add(dup, f"duplicate id in {f.id}: " + _text(out[f.id][dup]))
        context_numeric = [
            c for c, k in getattr(self, "context_kinds_", {}).items() if k == "numeric"
        ]
        for col in [*f.numeric, *context_numeric]:
            raw = df[col]
            if isinstance(raw.dtype, np.dtype) and raw.dtype.kind in "fiub":  # numpy numbers
                array = raw.to_numpy(np.float64)
                add(np.isnan(array), f"missing value in {col}")
            else:
                values = _to_float(raw)
                add(raw.isna(), f"missing value in {col}")
                non_numeric = raw.notna() & values.isna()
                if non_numeric.any():
                    add(non_numeric, f"non-numeric value in {col}: " + _text(raw[non_numeric]))
                array = values.to_numpy()
            add(np.isinf(array), f"infinite value in {col}")
            out[col] = pd.Series(np.where(np.isfinite(array), array, 0.0), index=df.index)
        for col in [*f.categorical, *(c for c in f.context if c not in context_numeric)]:
            add(df[col].isna(), f"missing value in {col}")
            out[col] = df[col]
        if f.timestamp:
            raw = df[f.timestamp]
            parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
            add(parsed.isna(), f"missing or unparseable timestamp in {f.timestamp}")
            out[f.timestamp] = parsed
        out[REASON] = reasons
        return pd.DataFrame(out, index=df.index)

    # ------------------------------------------------------------------ storage
    def _check_fitted(self) -> None:
        if not hasattr(self, "transforms_"):
            from sklearn.exceptions import NotFittedError

            msg = "this Preprocessor is not fitted yet: call fit(df) first"
            raise NotFittedError(msg)

    def to_dict(self) -> dict[str, Any]:
        """Everything fitted, as JSON-serialisable values."""
        self._check_fitted()
        return {
            "features": self.features.model_dump(),
            "transforms": self.transforms_,
            "means": self.means_,
            "scales": self.scales_,
            "steps": self.steps_,
            "origins": self.origins_,
            "categories": self.categories_,
            "context_kinds": self.context_kinds_,
            "context_means": self.context_means_,
            "context_scales": self.context_scales_,
            "context_categories": self.context_categories_,
        }

    def save(self, directory: Path) -> None:
        """Write ``preprocessing.json`` into ``directory``."""
        (directory / "preprocessing.json").write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: Path) -> Preprocessor:
        """Read what :meth:`save` wrote."""
        state = json.loads((directory / "preprocessing.json").read_text())
        pre = cls(Features.model_validate(state["features"]))
        pre.transforms_ = state["transforms"]
        pre.means_ = state["means"]
        pre.scales_ = state["scales"]
        pre.categories_ = state["categories"]
        pre.steps_ = state["steps"]
        pre.origins_ = state["origins"]
        pre.context_kinds_ = state["context_kinds"]
        pre.context_means_ = state["context_means"]
        pre.context_scales_ = state["context_scales"]
        pre.context_categories_ = state["context_categories"]
        return pre


def _check_frame(df: object) -> None:
    if not isinstance(df, pd.DataFrame):
        msg = f"expected a pandas DataFrame, got {type(df).__name__}"
        raise TypeError(msg)


#: C0 control characters but tab: a value holding one quarantines its row
CONTROL = re.compile("[\x00-\x08\x0a-\x1f]")


def _control_characters(values: pd.Series) -> pd.Series:
    """Per value, the first control character as ``U+00XX`` (None: there is none)."""
    found = pd.Series(None, index=values.index, dtype=object)
    if not (is_object_dtype(values) or is_string_dtype(values)) or not _may_hold_controls(values):
        return found
    try:
        has = values.str.contains(CONTROL.pattern, regex=True, na=False).to_numpy(bool)
    except AttributeError:  # an object column without any text
        return found
    if has.any():
        found[has] = [f"U+{ord(CONTROL.search(v).group()):04X}" for v in values[has]]
    return found


def _may_hold_controls(values: pd.Series) -> bool:
    """False when the bytes of Arrow-backed text hold no control character: a check of the
    whole buffer at once (UTF-8 never encodes one inside another character), ~80x faster than
    matching each value."""
    if getattr(values.dtype, "storage", None) != "pyarrow":
        return True
    array = pa.array(values.array)  # the column's own buffers, not a copy
    for chunk in array.chunks if isinstance(array, pa.ChunkedArray) else [array]:
        data = chunk.buffers()[2]
        if data is not None:
            raw = np.frombuffer(data, np.uint8)
            if ((raw < 0x20) & (raw != 0x09)).any():
                return True
    return False


def _text(values: pd.Series) -> pd.Series:
    """Each value's short repr, as strings (also for empty or numeric series)."""

    def short(value: object) -> str:
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."

    return values.astype(object).map(short).astype(object)


def _to_float(values: pd.Series) -> pd.Series:
    """Numbers as float64; anything that is not a finite-or-infinite number becomes NaN."""
    try:
        return pd.to_numeric(values, errors="coerce").astype(np.float64)
    except (OverflowError, TypeError, ValueError):  # e.g. an int too large for any dtype

        def one(value: object) -> float:
            try:
                return float(value)  # type: ignore[arg-type]
            except OverflowError:  # an integer beyond float range
                return np.inf if value > 0 else -np.inf  # type: ignore[operator]
            except (TypeError, ValueError):
                return np.nan

        return values.map(one).astype(np.float64)
