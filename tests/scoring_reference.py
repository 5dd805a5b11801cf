"""The scoring path before issue 18 (per-value pandas validation, two Parquet passes, every id
hash in RAM), kept verbatim as the reference the equality tests compare the new path with
(``tests/test_scoring_equality.py``). Not used by the package."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly.detector import Detector
from anomaly.explain import explain
from anomaly.io import DataError, iter_rows, write_parquet_atomic
from anomaly.preprocessing import (
    MAX_ID_LENGTH,
    REASON,
    Preprocessor,
    SchemaError,
    _check_frame,
    _control_characters,
    _text,
    _to_float,
)
from anomaly.scoring import (
    _POSITION,
    BatchSummary,
    FlaggedRows,
    _numeric_columns,
    _work_dir,
    batch_id_for,
    output_paths,
    output_schema,
    passthrough_columns,
)


def validate_reference(self: Preprocessor, df: pd.DataFrame) -> pd.DataFrame:
    """The required columns, numerics coerced, with a per-row ``reason`` ("" = valid)."""
    _check_frame(df)
    self.check_schema(list(df.columns))
    df = df.reset_index(drop=True)
    f = self.features
    out = pd.DataFrame(index=df.index)
    reasons = pd.Series([""] * len(df), index=df.index, dtype=object)

    def add(mask: pd.Series | np.ndarray, text: str | pd.Series) -> None:
        mask = pd.Series(np.asarray(mask, dtype=bool), index=df.index)
        if mask.any():
            # a Series of texts may hold only the masked rows (texts are built for those)
            piece = text.reindex(mask.index[mask]) if isinstance(text, pd.Series) else text
            reasons[mask] = (reasons[mask] + "; " + piece).str.lstrip("; ")

    ids = df[f.id]
    out[f.id] = ids.astype(str).where(ids.notna(), None)
    add(ids.isna() | (out[f.id].str.strip() == ""), f"missing id ({f.id})")
    text_ids = out[f.id].fillna("")
    too_long = f"id longer than {MAX_ID_LENGTH} characters ({f.id})"
    add(text_ids.str.len() > MAX_ID_LENGTH, too_long)
    for col in df.columns:  # in any column: a NUL cut dates short; others garble text
        found = _control_characters(df[col])
        add(found.notna(), "control character " + found.fillna("") + f" in {col}")
    dup = ids.notna() & ids.astype(str).duplicated(keep="first")
    add(dup, f"duplicate id in {f.id}: " + _text(out[f.id][dup]))
    context_numeric = [c for c, k in getattr(self, "context_kinds_", {}).items() if k == "numeric"]
    for col in [*f.numeric, *context_numeric]:
        raw = df[col]
        values = _to_float(raw)
        add(raw.isna(), f"missing value in {col}")
        non_numeric = raw.notna() & values.isna()
        add(non_numeric, f"non-numeric value in {col}: " + _text(raw[non_numeric]))
        add(np.isinf(values), f"infinite value in {col}")
        out[col] = values.where(np.isfinite(values), 0.0)
    for col in [*f.categorical, *(c for c in f.context if c not in context_numeric)]:
        add(df[col].isna(), f"missing value in {col}")
        out[col] = df[col]
    if f.timestamp:
        raw = df[f.timestamp]
        parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
        add(parsed.isna(), f"missing or unparseable timestamp in {f.timestamp}")
        out[f.timestamp] = parsed
    out[REASON] = reasons
    return out


class _SeenIdsReference:
    """64-bit hashes of the ids of earlier chunks (8 bytes an id; a false duplicate needs a
    hash collision, odds about n² / 2⁶⁵), sorted, in a buffer grown by a quarter at a time."""

    def __init__(self) -> None:
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.n = 0

    def repeated(self, ids: pd.Series) -> np.ndarray:
        """Which ids were seen in an earlier chunk; remembers the new ones."""
        h = pd.util.hash_pandas_object(ids.astype(str), index=False).to_numpy()
        known = self.hashes[: self.n]
        pos = np.searchsorted(known, h).clip(max=max(self.n - 1, 0))
        seen = known[pos] == h if self.n else np.zeros(len(h), dtype=bool)
        del known, pos  # no view of the buffer may outlive a resize
        new = np.unique(h[~seen])
        end = self.n + len(new)
        if end > len(self.hashes):
            # realloc in place (no copy of what is kept, where the allocator can remap)
            self.hashes.resize(max(end, len(self.hashes) * 5 // 4), refcheck=False)
        self.hashes[self.n : end] = new
        # two sorted runs: the stable sort (timsort) merges them in linear time with a
        # temporary the size of the new run only
        self.hashes[:end].sort(kind="stable")
        self.n = end
        return seen


def score_file_reference(
    detector: Detector,
    path: Path,
    out_dir: Path,
    chunk_rows: int = 100_000,
    model_version: str = "",
    explain_rows: int = 1_000,
    batch_id: str | None = None,
    passthrough: list[str] | Literal["all"] | None = None,
) -> BatchSummary:
    """Score one batch file into ``out_dir/<batch_id>.scored.parquet`` (+ quarantined rows).

    ``batch_id`` defaults to :func:`batch_id_for` the file. The ``explain_rows`` flagged rows
    with the lowest log-likelihood get contributions; the others an empty list (``anomaly
    explain`` explains any row on demand). ``passthrough`` names the input columns copied
    into the output (None: the feature columns; ``"all"``: every column).
    """
    batch_id = batch_id or batch_id_for(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    output, quarantine_path = output_paths(out_dir, batch_id)
    work = _work_dir(out_dir, batch_id)
    tmp = work / "pass1.parquet"
    # the fpr rule flags a row by its own p-value, so each chunk's flags are final (1 byte a
    # row is kept); fdr (Benjamini–Hochberg) needs the whole batch's p-values first
    per_row = detector.calibrator.rule == "fpr"
    p_values, has_reason, flag_parts = [np.zeros(0)], [np.zeros(0, bool)], [np.zeros(0, bool)]
    quarantined = []
    candidates, n_before = [], 0  # raw rows that may be flagged: p <= alpha or a reason
    ll_sum, seen = 0.0, _SeenIdsReference()
    id_col = detector.preprocessor.features.id
    try:
        chunks = iter_rows(path, chunk_rows)
        first = next(chunks, None)  # a CSV with a header only has no chunk
        columns = None if first is None else list(first[0].columns)
        copied = passthrough_columns(detector, passthrough, columns)
        schema = output_schema(detector, copied)
        with pq.ParquetWriter(tmp, schema) as writer:
            for chunk, unreadable in itertools.chain([first] if first else [], chunks):
                if len(unreadable):  # CSV rows that are not rows of the table: too many fields
                    quarantined.append(unreadable)
                result = detector.score(chunk, flag=False)
                scored = result.scored
                repeated = seen.repeated(scored[id_col])
                if repeated.any():  # duplicates of ids in earlier chunks
                    again = chunk.iloc[scored.index[repeated]].copy()
                    again[REASON] = f"duplicate id in {id_col}: " + again[id_col].astype(str)
                    quarantined.append(again)
                    scored = scored.loc[~repeated]
                scored = _with_passthrough_reference(detector, scored, chunk, copied)
                writer.write_table(pa.Table.from_pandas(scored, schema, preserve_index=False))
                p, reason = scored["p_value"].to_numpy(), scored["reason"].to_numpy() != ""
                if per_row:
                    flag_parts.append(detector.flag(p, reason))
                else:
                    p_values.append(p)
                    has_reason.append(reason)
                maybe = (p <= detector.calibrator.alpha) | reason
                rows = chunk.iloc[scored.index[maybe]].reset_index(drop=True)
                for col in ("log_likelihood", "p_value", "reason"):
                    rows[col] = scored[col].to_numpy()[maybe]
                rows[_POSITION] = n_before + np.flatnonzero(maybe)
                candidates.append(rows)
                n_before += len(scored)
                ll_sum += float(scored["log_likelihood"].sum())
                if len(result.quarantined):
                    quarantined.append(result.quarantined)
    except (SchemaError, DataError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        return BatchSummary(batch_id, str(path), "rejected", error=str(exc))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if per_row:
        flags = np.concatenate(flag_parts)
    else:
        flags = detector.flag(np.concatenate(p_values), np.concatenate(has_reason))
    _write_flags_reference(tmp, output, flags)
    quarantine_frame = pd.concat(quarantined, ignore_index=True) if quarantined else None
    quarantine_output = (
        None
        if quarantine_frame is None
        else write_parquet_atomic(quarantine_frame.astype(str), quarantine_path, work)
    )
    shutil.rmtree(work, ignore_errors=True)
    flagged = pd.concat(candidates, ignore_index=True) if candidates else pd.DataFrame()
    explain_start = time.perf_counter()
    if len(flagged):
        flagged = flagged.loc[flags[flagged[_POSITION].to_numpy()]].drop(columns=_POSITION)
        flagged = flagged.reset_index(drop=True)
        worst = np.argsort(flagged["log_likelihood"].to_numpy(), kind="stable")[:explain_rows]
        contributions: list[list[dict[str, Any]]] = [[] for _ in range(len(flagged))]
        if len(worst):
            explained = explain(detector, flagged.iloc[worst].reset_index(drop=True))
            for row, value in zip(worst.tolist(), explained, strict=True):
                contributions[row] = value
        flagged["contributions"] = contributions
    explain_seconds = time.perf_counter() - explain_start
    n_flagged, n_scored = int(flags.sum()), len(flags)
    shift = detector.calibrator.shift_alarm(n_flagged, n_scored)
    n_quarantined = 0 if quarantine_frame is None else len(quarantine_frame)
    return BatchSummary(
        batch_id=batch_id,
        source=str(path),
        status="scored",
        rows_in=n_scored + n_quarantined,
        rows_scored=n_scored,
        rows_quarantined=n_quarantined,
        rows_flagged=n_flagged,
        model_version=model_version,
        output=str(output),
        quarantine_output=str(quarantine_output) if quarantine_output else None,
        flag_rate=shift.flag_rate,
        expected_rate=shift.expected_rate,
        shift_p_value=shift.p_value,
        shift_alarm=shift.alarm,
        mean_log_likelihood=ll_sum / n_scored if n_scored else None,
        explain_seconds=explain_seconds,
        quarantined=quarantine_frame,
        flagged_rows=FlaggedRows.of(flagged.reset_index(drop=True)),
    )


def _with_passthrough_reference(
    detector: Detector, scored: pd.DataFrame, chunk: pd.DataFrame, columns: list[str]
) -> pd.DataFrame:
    """``scored`` with the ``columns`` of its input rows (``scored.index`` = positions)."""
    if not columns:
        return scored
    raw = chunk.iloc[scored.index]
    numeric = _numeric_columns(detector)
    copied = {
        c: pd.to_numeric(raw[c], errors="coerce").astype(np.float64).to_numpy()
        if c in numeric
        else raw[c].map(_value_text).to_numpy()
        for c in columns
    }
    return scored.assign(**copied)


def _value_text(value: Any) -> str | None:
    """A copied value as text; missing values stay missing."""
    if isinstance(value, str):
        return value
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    return str(value)


def _write_flags_reference(tmp: Path, output: Path, flags: np.ndarray) -> None:
    """Copy the pass-1 file to ``output`` with ``is_anomaly`` set, atomically."""
    final = tmp.with_name(output.name)
    start = 0
    with pq.ParquetFile(tmp, pre_buffer=False) as source:  # see io.iter_chunks
        writer = pq.ParquetWriter(final, source.schema_arrow)
        with writer:
            for batch in source.iter_batches():
                stop = start + batch.num_rows
                column = batch.schema.get_field_index("is_anomaly")
                batch = batch.set_column(column, "is_anomaly", pa.array(flags[start:stop]))
                writer.write_batch(batch)
                start = stop
    os.replace(final, output)
    tmp.unlink()
