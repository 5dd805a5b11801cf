"""Scoring a batch file in bounded memory: read by chunks, score, flag, write atomically.

Pass 1 scores each chunk and streams the rows to a temporary Parquet file, keeping per row only
its flag (1 byte) under the ``fpr`` rule or its p-value (8 bytes) under ``fdr``, which needs the
whole batch (Benjamini–Hochberg), plus an 8-byte hash of its id for the duplicate check, and the
rows that may be flagged.
Pass 2 streams the temporary file into the final output with ``is_anomaly`` set, then renames
it into place, so a reader never sees a partial output.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly.detector import Detector
from anomaly.explain import explain
from anomaly.io import DataError, iter_rows, write_parquet_atomic
from anomaly.preprocessing import REASON, SchemaError


@dataclass(frozen=True)
class BatchSummary:
    """What happened to one batch; ``status`` is ``scored`` or ``rejected`` (with ``error``)."""

    batch_id: str
    source: str
    status: str
    rows_in: int = 0
    rows_scored: int = 0
    rows_quarantined: int = 0
    rows_flagged: int = 0
    model_version: str = ""
    output: str | None = None
    quarantine_output: str | None = None
    flag_rate: float = 0.0
    expected_rate: float = 0.0
    shift_p_value: float = 1.0
    shift_alarm: bool = False
    mean_log_likelihood: float | None = None
    #: wall-clock seconds spent explaining the flagged rows (part of the batch's time)
    explain_seconds: float = 0.0
    error: str | None = None
    #: SHA-256 of the file's bytes: with its name, the batch's identity
    content_hash: str | None = None
    #: raw values + scores of the flagged rows, and the quarantined raw rows + reason
    flagged: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    quarantined: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the counts, not the rows)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.repr}


def batch_id_for(path: Path) -> str:
    """A safe, unique batch id from a file name (never its folder).

    The whole name is kept (``x.csv`` and ``x.parquet`` differ); characters other than
    letters, digits, ``_``, ``-`` and ``.`` become ``_``, and when anything had to change a
    hash of the original name is appended, so ``a b.csv`` and ``a_b.csv`` stay apart. Names
    longer than :data:`MAX_BATCH_ID` are cut there (+ the hash), so output file names stay
    within the file system's 255 bytes.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name).lstrip("-._") or "batch"
    if safe != path.name or len(safe) > MAX_BATCH_ID:
        digest = hashlib.sha1(path.name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[:MAX_BATCH_ID]}-{digest}"
    return safe


#: the longest batch id kept from a file name (its outputs add ``.quarantine.parquet``)
MAX_BATCH_ID = 120


def output_paths(out_dir: Path, batch_id: str) -> tuple[Path, Path]:
    """(scored output, quarantine output) of a batch."""
    return out_dir / f"{batch_id}.scored.parquet", out_dir / f"{batch_id}.quarantine.parquet"


_POSITION = "__position"


class _SeenIds:
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


def score_file(
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
    ll_sum, seen = 0.0, _SeenIds()
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
                scored = _with_passthrough(detector, scored, chunk, copied)
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
    _write_flags(tmp, output, flags)
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
        flagged=flagged.reset_index(drop=True),
        quarantined=quarantine_frame,
    )


#: the score columns of a scored output, after the copied input columns
SCORE_FIELDS = (
    pa.field("log_likelihood", pa.float64()),
    pa.field("p_value", pa.float64()),
    pa.field("is_anomaly", pa.bool_()),
    pa.field("reason", pa.string()),
)


def passthrough_columns(
    detector: Detector, wanted: list[str] | Literal["all"] | None, columns: list[str] | None
) -> list[str]:
    """The input columns a scored output copies besides the id and the timestamp: ``wanted``
    (None: the feature columns; ``"all"``: every column of the batch, ``columns``, except
    those named like a score column). A named column the batch lacks raises
    :class:`SchemaError`."""
    f = detector.preprocessor.features
    if wanted is None:
        names = [*f.numeric, *f.categorical, *f.context]
    elif wanted == "all":
        taken = {field.name for field in SCORE_FIELDS}
        names = [str(c) for c in columns or [] if str(c) not in taken]
    else:
        missing = [c for c in wanted if columns is not None and c not in columns]
        if missing:
            msg = (
                f"scoring.passthrough names column(s) {missing} that the batch does not have; "
                f"it has {len(columns or [])} column(s): {list(columns or [])[:20]}"
            )
            raise SchemaError(msg)
        names = list(wanted)
    return [c for c in dict.fromkeys(names) if c not in (f.id, f.timestamp)]


def _numeric_columns(detector: Detector) -> set[str]:
    """Input columns read as numbers (the rest are copied as text)."""
    pre = detector.preprocessor
    context = getattr(pre, "context_kinds_", {})
    return {*pre.features.numeric, *(c for c, kind in context.items() if kind == "numeric")}


def output_schema(detector: Detector, passthrough: list[str] | None = None) -> pa.Schema:
    """Arrow schema of a scored output file: the id, the timestamp, the ``passthrough``
    columns (numeric features as float64, others as text) and the scores."""
    features = detector.preprocessor.features
    fields = [pa.field(features.id, pa.string())]
    if features.timestamp:
        fields.append(pa.field(features.timestamp, pa.timestamp("ns", tz="UTC")))
    numeric = _numeric_columns(detector)
    for column in passthrough or []:
        fields.append(pa.field(column, pa.float64() if column in numeric else pa.string()))
    return pa.schema([*fields, *SCORE_FIELDS])


def _with_passthrough(
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
        else raw[c].map(_text).to_numpy()
        for c in columns
    }
    return scored.assign(**copied)


def _text(value: Any) -> str | None:
    """A copied value as text; missing values stay missing."""
    if isinstance(value, str):
        return value
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    return str(value)


def _work_dir(out_dir: Path, batch_id: str) -> Path:
    """An empty scratch folder for one batch's temporary files; what a killed run left in it
    goes, so outputs hold only finished files."""
    work = out_dir / f".{batch_id}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def _write_flags(tmp: Path, output: Path, flags: np.ndarray) -> None:
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
