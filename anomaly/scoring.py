"""Scoring a batch file in bounded memory: read by chunks, score, flag, write atomically.

One pass scores each chunk and streams its rows to a temporary Parquet file (one row group a
chunk), with their flags under the ``fpr`` rule; it appends the rows that may be flagged to a
spill file and keeps, only under ``fdr``, which needs the whole batch (Benjamini–Hochberg),
each row's p-value (8 bytes). The ids go to hash-partitioned spill files, checked for ids
repeated across chunks at the end, one part at a time, so memory does not grow with the batch.
The flagged rows are then copied, one chunk's at a time, into a :class:`FlaggedRows` spill that
the store reads in slices; only the ``explain_rows`` worst of them are held, to be explained.
The temporary file is renamed into place, so a reader never sees a partial output; a second
pass copies it first only when a row must go (a repeated id) or its flags come after the pass
(``fdr``).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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
    #: the quarantined raw rows + reason
    quarantined: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    #: raw values + scores (+ contributions) of the flagged rows, read in slices (what the
    #: store's batch write takes) or as one frame by ``flagged_rows.frame()``; see FlaggedRows
    flagged_rows: FlaggedRows | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (the counts, not the rows)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.repr}


class FlaggedRows:
    """A batch's flagged rows (raw values, ``log_likelihood``, ``p_value``, ``reason``,
    ``contributions``), held in an anonymous temporary file, one Arrow IPC frame per chunk
    (:func:`append_frame`), so that memory holds one chunk's rows, not the batch's. A set made
    :meth:`of` a frame keeps that frame in memory, as it was given.

    ``len()``, ``iloc[start:stop]`` or ``iloc[positions]`` (a frame of those rows) and
    ``rows[column]`` (one column of all) are what the store's batch write reads, one slice
    after another; :meth:`frame` gives them all. The file is made in ``folder`` by the first
    :meth:`add` of any rows (none without them); it has no name (it is gone when this object
    is, or its process ends, even killed)."""

    def __init__(self, folder: Path | None, template: pd.DataFrame) -> None:
        self._folder = folder
        self._file: BinaryIO | None = None  # made by the first add of rows
        self._template = template  # no rows: the columns and their dtypes
        self._offsets: list[int] = []  # where each piece starts in the file
        self._starts = [0]  # the first row of each piece, then the number of rows
        self._held: tuple[int, pd.DataFrame] | None = None  # the last piece read
        #: contributions of the explained rows, by row (the others have none); None: the rows
        #: hold their own column, if any
        self.contributions: dict[int, list[dict[str, Any]]] | None = {}

    @classmethod
    def of(cls, frame: pd.DataFrame) -> FlaggedRows:
        """A frame of flagged rows as a set; :meth:`frame` gives it back."""
        rows = cls(None, frame.iloc[:0])
        if len(frame):
            rows._offsets.append(-1)
            rows._starts.append(len(frame))
            rows._held = (0, frame)  # never replaced: it is the only piece
        rows.contributions = None
        return rows

    def add(self, piece: pd.DataFrame) -> None:
        """Append rows (the template's columns and dtypes)."""
        if not len(piece):
            return
        if self._file is None:  # held while the rows are, so not in a with block
            self._file = tempfile.TemporaryFile(dir=self._folder)  # noqa: SIM115
        self._offsets.append(self._file.seek(0, os.SEEK_END))
        append_frame(self._file, piece)
        self._starts.append(self._starts[-1] + len(piece))

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def pieces(self) -> list[int]:
        """The number of rows of each stored piece (one a chunk that had flagged rows)."""
        return np.diff(self._starts).tolist()

    @property
    def iloc(self) -> _Slicer:
        """``rows.iloc[start:stop]``: the frame of those rows, as ``frame().iloc`` gives it."""
        return _Slicer(self)

    def frame(self) -> pd.DataFrame:
        """Every row as one frame (index 0 … n-1)."""
        return self.rows(0, len(self))

    def __getitem__(self, column: str) -> pd.Series:
        """One column of every row, as ``frame()[column]`` (only that column is held)."""
        if column == "contributions" and self.contributions is not None:
            values = [self.contributions.get(i, []) for i in range(len(self))]
            return (
                pd.Series(values, name=column, dtype=object) if values else self.rows(0, 0)[column]
            )
        pieces = [self._piece(k)[column] for k in range(len(self._offsets))]
        return pd.concat([self._template[column], *pieces], ignore_index=True)

    def take(self, positions: Any) -> pd.DataFrame:
        """The rows at ``positions`` (0 … n-1), in that order, as ``frame().iloc[positions]``
        gives them; each piece that holds any of them is read once."""
        positions = np.asarray(positions, dtype=np.intp)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            msg = f"row positions must be in 0 … {len(self) - 1}"
            raise IndexError(msg)
        piece_of = np.searchsorted(self._starts, positions, side="right") - 1
        found, asked = [self._template], [np.zeros(0, np.intp)]
        for k in np.unique(piece_of).tolist():
            mine = np.flatnonzero(piece_of == k)
            found.append(self._piece(k).iloc[positions[mine] - self._starts[k]])
            asked.append(mine)
        out = pd.concat(found, ignore_index=True).iloc[np.argsort(np.concatenate(asked))]
        out.index = pd.Index(positions)
        if self.contributions is not None:
            values = [self.contributions.get(i, []) for i in positions.tolist()]
            out["contributions"] = pd.Series(values, out.index, object) if len(self) else values
        return out

    def rows(self, start: int, stop: int) -> pd.DataFrame:
        """Rows ``start`` to ``stop`` (indexed so), reading only the pieces that hold them."""
        start, stop = max(0, min(start, len(self))), max(0, min(stop, len(self)))
        stop = max(start, stop)
        found = [self._template]
        k = bisect.bisect_right(self._starts, start) - 1
        while k < len(self._offsets) and self._starts[k] < stop:
            first = self._starts[k]
            found.append(self._piece(k).iloc[max(start - first, 0) : stop - first])
            k += 1
        out = pd.concat(found, ignore_index=True)
        out.index = pd.RangeIndex(start, start + len(out))
        if self.contributions is not None:
            values = [self.contributions.get(i, []) for i in range(start, stop)]
            # as a slice of the whole frame has it (its lists make it object); none: as before
            out["contributions"] = pd.Series(values, out.index, object) if len(self) else values
        return out

    def _piece(self, k: int) -> pd.DataFrame:
        if self._held is None or self._held[0] != k:
            self._file.seek(self._offsets[k])
            self._held = (k, read_frame(self._file))
        return self._held[1]


@dataclass(frozen=True)
class _Slicer:
    rows: FlaggedRows

    def __getitem__(self, rows: slice | Any) -> pd.DataFrame:
        if not isinstance(rows, slice):
            return self.rows.take(rows)
        start, stop, step = rows.indices(len(self.rows))
        if step != 1:
            return self.rows.take(np.arange(start, stop, step))
        return self.rows.rows(start, stop)


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


_POSITION, _FLAG = "__position", "__flag"


class _IdSpill:
    """Which scored rows repeat an id of an earlier chunk, without holding the ids in RAM.

    Each chunk's scored ids are hashed (64 bits; a false duplicate needs a collision, odds
    about n² / 2⁶⁵) and appended with their row's place to one of :data:`PARTS` files under
    the batch's work folder, chosen by the hash's top bits. :func:`_repeated_ids` then reads
    one file at a time (1/PARTS of the rows); a file of more than :data:`HELD` records is
    first split by the hash's next bits, a block at a time: memory holds at most about
    ``HELD`` records, however large the batch.
    """

    BITS = 6
    PARTS = 2**BITS
    #: the most records read at once (6 MB); a 100M-row batch has 1.6M in each of its parts
    HELD = 2**18
    RECORD = np.dtype([("hash", "<u8"), ("position", "<i8"), ("chunk", "<i4"), ("row", "<i4")])

    def __init__(self, folder: Path, used_bits: int = 0) -> None:
        folder.mkdir()
        self.shift = np.uint64(64 - self.BITS - used_bits)  # the hash bits that pick a file
        self.paths = [folder / f"ids.{k:02d}" for k in range(self.PARTS)]
        self.files = [path.open("wb") for path in self.paths]

    def add(self, ids: pd.Series, position: int, chunk: int, rows: np.ndarray) -> None:
        """Remember chunk ``chunk``'s scored ids; the first is scored row ``position`` of the
        batch, ``rows`` are their positions in the chunk."""
        records = np.empty(len(ids), self.RECORD)
        records["hash"] = _id_hashes(ids)
        records["position"] = position + np.arange(len(ids))
        records["chunk"], records["row"] = chunk, rows
        self.write(records)

    def write(self, records: np.ndarray) -> None:
        """Append records, each to the file its hash picks."""
        part = ((records["hash"] >> self.shift) & np.uint64(self.PARTS - 1)).astype(np.intp)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(self.PARTS + 1))
        for k in np.flatnonzero(np.diff(bounds)):
            records[order[bounds[k] : bounds[k + 1]]].tofile(self.files[k])

    def close(self) -> None:
        """Close the spill files (they go with the work folder)."""
        for file in self.files:
            file.close()


def _id_hashes(ids: pd.Series) -> np.ndarray:
    """64-bit hashes of the ids' text (``str`` of each; UTF-8), one per id: a function of the
    text only, so an id read as a number in one chunk and as text in another hashes alike.
    Integer ids become text in Arrow, not one Python string each."""
    if isinstance(ids.dtype, np.dtype) and ids.dtype.kind in "iu":
        text = pc.cast(pa.array(ids.to_numpy()), pa.string())
    else:
        text = pa.array(ids.astype(str), pa.string())  # pandas' Arrow text: may be chunked
        text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    return _hash_bytes(text)


#: multipliers of the 64-bit mix (splitmix64's finaliser) and of a text's length
_MIX = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15))


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, a bijection of 64-bit words that spreads every input bit."""
    h = (h ^ (h >> np.uint64(30))) * _MIX[0]
    h = (h ^ (h >> np.uint64(27))) * _MIX[1]
    return h ^ (h >> np.uint64(31))


def _hash_bytes(text: pa.Array) -> np.ndarray:
    """A 64-bit hash of each value of an Arrow string or binary array, vectorised over its
    buffers: the value's length, then each 8-byte word of it (zero-padded), mixed in turn.
    Values of one word count are hashed together, so memory stays that of the values."""
    text = text.cast(pa.large_binary())  # 64-bit offsets, bytes as they are
    n = len(text)
    _, offsets_buf, data_buf = text.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[text.offset : text.offset + n + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    hashes = _mix(lengths.astype(np.uint64) * _MIX[2])
    words = (lengths + 7) // 8
    for width in np.unique(words[words > 0]).tolist():
        rows = np.flatnonzero(words == width)
        padded = np.zeros((len(rows), width * 8), np.uint8)
        column = np.arange(width * 8)
        inside = column < lengths[rows, None]
        padded[inside] = data[(offsets[rows, None] + column)[inside]]
        h = hashes[rows]
        for word in padded.view("<u8").T:
            h = _mix(h ^ word)
        hashes[rows] = h
    return hashes


def _repeated_ids(folders: list[Path], offsets: list[int]) -> np.ndarray:
    """The spill records (sorted by position in the batch) of the rows whose id a row of an
    earlier chunk had, from the spill ``folders`` of a batch's parts in file order; a part's
    positions start at its ``offsets`` entry (the rows its earlier parts scored). The spill
    files are read one hash part at a time (over every folder), then deleted."""
    found: list[np.ndarray] = []
    for k in range(_IdSpill.PARTS):
        files = [
            (folder / f"ids.{k:02d}", offset)
            for folder, offset in zip(folders, offsets, strict=True)
        ]
        _repeated_in(files, 0, found)
    repeated = np.concatenate(found) if found else np.empty(0, _IdSpill.RECORD)
    return repeated[np.argsort(repeated["position"], kind="stable")]


def _repeated_in(files: list[tuple[Path, int]], used_bits: int, found: list[np.ndarray]) -> None:
    """Add to ``found`` the records of the spill ``files`` (with the offset of their positions)
    of one hash part (its first ``used_bits`` bits are the same) whose id an earlier chunk had;
    a part too large to hold is split by the next bits of the hash first. Deletes the files."""
    size = _IdSpill.RECORD.itemsize
    if sum(path.stat().st_size for path, _ in files) // size > _IdSpill.HELD and (
        used_bits + 2 * _IdSpill.BITS <= 64
    ):
        used_bits += _IdSpill.BITS
        spill = _IdSpill(files[0][0].with_name(f"{files[0][0].name}.split"), used_bits)
        for path, offset in files:
            for start in range(0, path.stat().st_size, _IdSpill.HELD * size):
                records = np.fromfile(path, _IdSpill.RECORD, _IdSpill.HELD, offset=start)
                records["position"] += offset
                spill.write(records)
            path.unlink()
        spill.close()
        for path in spill.paths:
            _repeated_in([(path, 0)], used_bits, found)
        spill.paths[0].parent.rmdir()
        return
    pieces = []
    for path, offset in files:
        records = np.fromfile(path, _IdSpill.RECORD)
        path.unlink()
        records["position"] += offset
        pieces.append(records)
    records = np.concatenate(pieces)
    del pieces
    if not len(records):
        return
    records = records[np.lexsort((records["position"], records["hash"]))]
    group = np.r_[True, records["hash"][1:] != records["hash"][:-1]]
    first_chunk = records["chunk"][group][np.cumsum(group) - 1]
    found.append(records[records["chunk"] > first_chunk])


@dataclass
class Part:
    """What scoring one stretch of a batch file (:func:`score_part`) leaves for
    :func:`merge_parts`: its scored rows in ``output`` (one row group a chunk, flagged under
    ``fpr``), its ids in the spill folder ``ids``, the rows that may be flagged in the spill
    file ``candidates`` (one Arrow IPC frame a chunk that has any), and what the merge needs in
    memory."""

    rows: range | None  # None: the whole file
    output: Path
    ids: Path
    candidates: Path
    #: no rows: the columns and dtypes of the candidate frames of every chunk, concatenated
    template: pd.DataFrame | None = None
    n_scored: int = 0
    chunk_sums: list[float] = field(default_factory=list)  # per chunk, sum of log-likelihoods
    p_values: list[np.ndarray] = field(default_factory=list)  # per chunk, only under fdr
    has_reason: list[np.ndarray] = field(default_factory=list)  # per chunk, only under fdr
    quarantined: list[list[pd.DataFrame]] = field(default_factory=list)  # per chunk
    error: str | None = None  # the batch's file or schema is unusable (it is rejected)


#: runs a part-scoring function over the planned row ranges, giving the parts in that order
MapParts = Callable[[Callable[[range | None], Part], list[range | None]], Iterable[Part]]


def plan_parts(path: Path, chunk_rows: int, split_rows: int | None) -> list[range | None]:
    """The row ranges a batch file is scored in: whole chunks, about ``split_rows`` rows each,
    for a Parquet file of more than ``split_rows`` rows; else ``[None]`` (the whole file, one
    part). A file whose row count cannot be read is one part (its reading reports why)."""
    if split_rows is None or path.suffix.lower() not in (".parquet", ".pq"):
        return [None]
    try:
        with path.open("rb") as handle, pq.ParquetFile(handle) as file:
            n_rows = file.metadata.num_rows
    except (OSError, pa.ArrowException):
        return [None]
    if n_rows <= split_rows:
        return [None]
    step = max(1, split_rows // chunk_rows) * chunk_rows
    return [range(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def score_part(
    detector: Detector,
    path: Path,
    work: Path,
    chunk_rows: int,
    passthrough: list[str] | Literal["all"] | None,
    rows: range | None,
) -> Part:
    """Score rows ``rows`` of a batch file (None: all) into a folder of ``work`` of their own.

    The result depends on its inputs only: a part that failed or was lost is scored again
    from the start (what an earlier try left in its folder goes first)."""
    first_chunk = 0 if rows is None else rows.start // chunk_rows
    folder = work / f"part-{first_chunk:09d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    part = Part(rows, folder / "scored.parquet", folder / "ids", folder / "candidates.arrows")
    # the fpr rule flags a row by its own p-value, so each chunk's flags are final and are
    # written as the chunk is; fdr (Benjamini–Hochberg) needs the whole batch's p-values first
    per_row = detector.calibrator.rule == "fpr"
    spill = _IdSpill(part.ids)
    id_col = detector.preprocessor.features.id
    try:
        chunks = iter_rows(path, chunk_rows, rows)
        first = next(chunks, None)  # a CSV with a header only has no chunk
        columns = None if first is None else list(first[0].columns)
        copied = passthrough_columns(detector, passthrough, columns)
        schema = output_schema(detector, copied)
        with (
            pq.ParquetWriter(part.output, schema, **_WRITE_OPTIONS) as writer,
            part.candidates.open("wb") as candidates,
        ):
            for k, (chunk, unreadable) in enumerate(
                itertools.chain([first] if first else [], chunks)
            ):
                part.quarantined.append([unreadable] if len(unreadable) else [])
                result = detector.score(chunk, flag=False)
                scored = result.scored
                n_before = part.n_scored
                spill.add(scored[id_col], n_before, first_chunk + k, scored.index.to_numpy())
                p, reason = scored["p_value"].to_numpy(), scored["reason"].to_numpy() != ""
                if per_row:
                    scored["is_anomaly"] = detector.flag(p, reason)
                else:
                    part.p_values.append(p)
                    part.has_reason.append(reason)
                table = _output_table(detector, scored, chunk, copied, schema)
                writer.write_table(table, row_group_size=max(len(table), 1))
                maybe = (p <= detector.calibrator.alpha) | reason
                rows_kept = chunk.iloc[scored.index[maybe]].reset_index(drop=True)
                for col in ("log_likelihood", "p_value", "reason"):
                    rows_kept[col] = scored[col].to_numpy()[maybe]
                rows_kept[_POSITION] = n_before + np.flatnonzero(maybe)
                rows_kept[_FLAG] = scored["is_anomaly"].to_numpy()[maybe]
                # the dtypes every chunk's rows get when put together (a CSV column may be read
                # as integers in one chunk and as floats in another)
                empty = rows_kept.iloc[:0]
                part.template = empty if part.template is None else _joined([part.template, empty])
                if len(rows_kept):
                    append_frame(candidates, rows_kept)
                part.n_scored += len(scored)
                part.chunk_sums.append(float(scored["log_likelihood"].sum()))
                if len(result.quarantined):
                    part.quarantined[k].append(result.quarantined)
    except (SchemaError, DataError) as exc:
        part.error = str(exc)
    finally:
        spill.close()
    return part


def score_file(
    detector: Detector,
    path: Path,
    out_dir: Path,
    chunk_rows: int = 100_000,
    model_version: str = "",
    explain_rows: int = 1_000,
    batch_id: str | None = None,
    passthrough: list[str] | Literal["all"] | None = None,
    split_rows: int | None = None,
    map_parts: MapParts = map,
) -> BatchSummary:
    """Score one batch file into ``out_dir/<batch_id>.scored.parquet`` (+ quarantined rows).

    ``batch_id`` defaults to :func:`batch_id_for` the file. The ``explain_rows`` flagged rows
    with the lowest log-likelihood get contributions; the others an empty list (``anomaly
    explain`` explains any row on demand). ``passthrough`` names the input columns copied
    into the output (None: the feature columns; ``"all"``: every column).

    A Parquet file of more than ``split_rows`` rows is scored in parts (:func:`plan_parts`,
    :func:`score_part`), run by ``map_parts`` (``map``: one after another here; the score flow
    gives one that runs them on the Dask workers; a file scored whole is scored here), then
    merged (:func:`merge_parts`) into what
    scoring it whole gives.
    """
    batch_id = batch_id or batch_id_for(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = _work_dir(out_dir, batch_id)
    try:
        score = functools.partial(score_part, detector, path, work, chunk_rows, passthrough)
        plan = plan_parts(path, chunk_rows, split_rows)
        parts = [score(None)] if plan == [None] else map_parts(score, plan)
        return merge_parts(
            detector, path, out_dir, work, parts, batch_id, chunk_rows, model_version, explain_rows
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def merge_parts(
    detector: Detector,
    path: Path,
    out_dir: Path,
    work: Path,
    parts: Iterable[Part],
    batch_id: str,
    chunk_rows: int,
    model_version: str = "",
    explain_rows: int = 1_000,
) -> BatchSummary:
    """One batch from its scored parts (in file order), as if it had been scored whole: ids
    repeated across chunks (of any part) are quarantined, the later copies; ``fdr`` flags over
    the whole batch; the scored and quarantine outputs written and renamed into place; the
    flagged rows explained. The first part's error in file order rejects the batch. ``work``
    is the batch's scratch folder (see :func:`score_file`).

    ``parts`` may come one at a time as they are scored (``on_workers`` gives them so): under
    ``fpr`` the rows of a split file's parts are copied into one file as each part arrives,
    while later parts are still being scored, so that only the last part's copy is left for
    after the scoring."""
    per_row = detector.calibrator.rule == "fpr"
    joined = work / "joined.parquet"
    parts, streamed = _collect(parts, joined if per_row else None)
    failed = next((part for part in parts if part.error), None)
    if failed is not None:
        return BatchSummary(batch_id, str(path), "rejected", error=failed.error)
    output, quarantine_path = output_paths(out_dir, batch_id)
    id_col = detector.preprocessor.features.id
    offsets = np.cumsum([0, *(part.n_scored for part in parts)]).tolist()
    n_before = offsets[-1]
    quarantined = [pieces for part in parts for pieces in part.quarantined]
    try:
        repeated = _repeated_ids([part.ids for part in parts], offsets[:-1])
        if len(repeated):
            _quarantine_repeated(path, chunk_rows, repeated, quarantined, id_col)
    except (SchemaError, DataError) as exc:
        return BatchSummary(batch_id, str(path), "rejected", error=str(exc))
    dropped = repeated["position"]
    flags = None  # under fpr they are in the part files already
    if not per_row:
        kept = _kept(n_before, dropped)
        p_values = [np.zeros(0), *(p for part in parts for p in part.p_values)]
        has_reason = [np.zeros(0, bool), *(r for part in parts for r in part.has_reason)]
        flags = detector.flag(np.concatenate(p_values)[kept], np.concatenate(has_reason)[kept])
    chunk_sums = [s for part in parts for s in part.chunk_sums]
    scored = [joined] if streamed else [part.output for part in parts]
    n_flagged, chunk_sums = _write_flags(scored, output, flags, dropped, chunk_sums)
    pieces = [piece for chunk_pieces in quarantined for piece in chunk_pieces]
    quarantine_frame = pd.concat(pieces, ignore_index=True) if pieces else None
    quarantine_output = (
        None
        if quarantine_frame is None
        else write_parquet_atomic(quarantine_frame.astype(str), quarantine_path, work)
    )
    flagged, explain_seconds = _flagged(
        detector, parts, offsets, dropped, flags, explain_rows, work
    )
    n_scored = n_before - len(dropped)
    shift = detector.calibrator.shift_alarm(n_flagged, n_scored)
    n_quarantined = 0 if quarantine_frame is None else len(quarantine_frame)
    ll_sum = 0.0
    for chunk_sum in chunk_sums:
        ll_sum += chunk_sum
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
        flagged_rows=flagged,
    )


def _flagged(
    detector: Detector,
    parts: list[Part],
    offsets: list[int],
    dropped: np.ndarray,
    flags: np.ndarray | None,
    explain_rows: int,
    work: Path,
) -> tuple[FlaggedRows, float]:
    """The flagged rows of a batch from its parts' candidate spill files, one chunk's rows at a
    time: without the ``dropped`` positions (repeated ids), flagged by their own flag (``fpr``)
    or by ``flags`` (the kept rows', ``fdr``), into a :class:`FlaggedRows` spill. Only the
    ``explain_rows`` rows of lowest log-likelihood (the earlier first among equals) are held,
    then explained. Returns the rows and the seconds spent explaining."""
    templates = [part.template for part in parts if part.template is not None]
    template = _joined(templates) if templates else pd.DataFrame()
    internal = [_POSITION, _FLAG]
    flagged = FlaggedRows(work, template.drop(columns=internal, errors="ignore"))
    worst = template.drop(columns=internal, errors="ignore")  # by row, the earlier first
    worst_rows = np.zeros(0, np.int64)
    for part, offset in zip(parts, offsets, strict=False):
        for piece in _pieces(part.candidates):
            piece = _joined([template, piece])
            position = piece[_POSITION].to_numpy() + offset
            keep = ~np.isin(position, dropped)
            new_position = position - np.searchsorted(dropped, position)  # after the dropped
            if flags is None:
                keep &= piece[_FLAG].to_numpy(bool)
            else:
                keep &= flags[new_position.clip(0, max(len(flags) - 1, 0))] if len(flags) else False
            piece = piece.loc[keep].drop(columns=internal)
            rows = len(flagged) + np.arange(len(piece))
            flagged.add(piece)
            ll = piece["log_likelihood"].to_numpy()
            if explain_rows and len(worst) == explain_rows:  # only rows below the last enter
                last = worst["log_likelihood"].to_numpy()[_lowest(worst, explain_rows)[-1]]
                enter = ~np.isnan(ll) if np.isnan(last) else ll < last
                piece, rows = piece.loc[enter], rows[enter]
            if len(piece) and explain_rows:
                worst = _joined([worst, piece])
                kept = np.sort(_lowest(worst, explain_rows))
                worst, worst_rows = worst.iloc[kept], np.r_[worst_rows, rows][kept]
    start = time.perf_counter()
    order = _lowest(worst, explain_rows) if len(worst) else []
    if len(order):
        explained = explain(detector, worst.iloc[order].reset_index(drop=True))
        flagged.contributions = dict(zip(worst_rows[order].tolist(), explained, strict=True))
    return flagged, time.perf_counter() - start


def _lowest(rows: pd.DataFrame, n: int) -> np.ndarray:
    """Places of the ``n`` rows of lowest log-likelihood, lowest first (the earlier first
    among equals; NaN last)."""
    return np.argsort(rows["log_likelihood"].to_numpy(), kind="stable")[:n]


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The frames as one (index 0 … n-1), each column of the dtype all of them share."""
    return pd.concat(frames, ignore_index=True)


def _pieces(path: Path) -> Iterator[pd.DataFrame]:
    """The frames of a candidate spill file, in order."""
    with path.open("rb") as file:
        while (frame := read_frame(file)) is not None:
            yield frame


def append_frame(file: BinaryIO, frame: pd.DataFrame) -> None:
    """Append a frame to a spill file: its length in bytes (8, little-endian), then the frame
    as one Arrow IPC stream, with pandas' metadata so that its dtypes come back. Data, not
    code: reading it back runs nothing (unlike a pickle)."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue()
    file.write(data.size.to_bytes(8, "little"))
    file.write(memoryview(data))


def read_frame(file: BinaryIO) -> pd.DataFrame | None:
    """The next frame :func:`append_frame` wrote to ``file`` (None at its end)."""
    head = file.read(8)
    if len(head) < 8:
        return None
    data = file.read(int.from_bytes(head, "little"))
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all().to_pandas()


def _collect(parts: Iterable[Part], joined: Path | None) -> tuple[list[Part], bool]:
    """The parts, checked to follow one another in file order, and whether their scored rows
    were copied into ``joined`` as they came: for more than one part and a ``joined`` path
    (None: their flags are not final). Every part is waited for, even after one that failed,
    so that none still writes into the work folder when it is removed."""
    received: list[Part] = []
    writer = None
    try:
        for part in parts:
            last = received[-1].rows if received else None
            if received and (last is None or part.rows is None or part.rows.start != last.stop):
                rows = [(p.rows.start, p.rows.stop) if p.rows else None for p in received]
                msg = f"parts must follow one another in file order, got rows {rows} then "
                raise ValueError(msg + f"{part.rows}")
            received.append(part)
            if joined is None or part.rows is None or any(p.error for p in received):
                continue
            with pq.ParquetFile(part.output, pre_buffer=False) as source:
                writer = writer or pq.ParquetWriter(joined, source.schema_arrow, **_WRITE_OPTIONS)
                for k in range(source.num_row_groups):
                    table = source.read_row_group(k)
                    writer.write_table(table, row_group_size=max(table.num_rows, 1))
            part.output.unlink()
    finally:
        if writer is not None:
            writer.close()
    return received, writer is not None


def _kept(n: int, dropped: np.ndarray) -> np.ndarray:
    """A mask of ``n`` rows without the ``dropped`` positions."""
    kept = np.ones(n, bool)
    kept[dropped] = False
    return kept


def _quarantine_repeated(
    path: Path,
    chunk_rows: int,
    repeated: np.ndarray,
    quarantined: list[list[pd.DataFrame]],
    id_col: str,
) -> None:
    """Put the raw rows whose id an earlier chunk had (read again from ``path``: only their
    chunks, for Parquet) into their chunk's quarantined rows, after its unreadable rows (the
    order a single pass gave)."""
    wanted = np.unique(repeated["chunk"]).tolist()
    if path.suffix.lower() in (".parquet", ".pq"):
        spans = {k: range(k * chunk_rows, (k + 1) * chunk_rows) for k in wanted}
        chunks = ((k, rows) for k in wanted for rows in iter_rows(path, chunk_rows, spans[k]))
    else:
        chunks = enumerate(iter_rows(path, chunk_rows))
    for k, (chunk, unreadable) in chunks:
        if k not in wanted:
            continue
        rows = repeated["row"][repeated["chunk"] == k]
        again = chunk.iloc[rows].copy()
        again[REASON] = f"duplicate id in {id_col}: " + again[id_col].astype(str)
        quarantined[k].insert(1 if len(unreadable) else 0, again)


#: how scored outputs are written: no dictionary pages. The rows' values are mostly distinct
#: (ids, scores, numbers), so pyarrow's dictionary tries cost 5–10× the encoding itself and its
#: fall-back pages end larger than plain ones (issue 18: a merge copies every row once more)
_WRITE_OPTIONS: dict[str, Any] = {"use_dictionary": False}

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


def _output_table(
    detector: Detector,
    scored: pd.DataFrame,
    chunk: pd.DataFrame,
    columns: list[str],
    schema: pa.Schema,
) -> pa.Table:
    """The output rows of ``scored`` with the ``columns`` of its input rows (``scored.index``
    = positions in ``chunk``), as an Arrow table of ``schema``, one array a column."""
    every = len(scored) == len(chunk)  # every row, in order (the index holds positions)
    raw = chunk if every or not columns else chunk.iloc[scored.index]
    numeric = _numeric_columns(detector)
    values: dict[str, Any] = {c: scored[c] for c in scored.columns}
    for c in columns:
        if c in numeric:
            values[c] = pd.to_numeric(raw[c], errors="coerce").astype(np.float64).to_numpy()
        else:
            values[c] = _texts(raw[c])
    arrays = [pa.array(values[f.name], type=f.type, from_pandas=True) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _texts(values: pd.Series) -> np.ndarray:
    """A copied column as text (see :func:`_text`); a text column without a per-value step."""
    if isinstance(values.dtype, pd.StringDtype):
        return values.astype(object).where(values.notna(), None).to_numpy()
    return values.map(_text).to_numpy()


def _text(value: Any) -> str | None:
    """A copied value as text; missing values stay missing."""
    if isinstance(value, str):
        return value
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    return str(value)


def _work_dir(out_dir: Path, batch_id: str) -> Path:
    """A new, empty scratch folder for one run of a batch (``.BATCH.XXXXXXXX.work``); what
    earlier runs of the batch left (a killed run's folder) goes first. Each run has its own
    folder: a part of a failed split run may still be writing on a Dask worker into that
    run's folder, which would otherwise reappear under the re-run as it is wiped."""
    earlier = re.compile(re.escape(f".{batch_id}.") + r"([a-z0-9_]{8}\.)?work")
    for folder in out_dir.glob(".*work"):
        if earlier.fullmatch(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{batch_id}.", suffix=".work", dir=out_dir))


def _write_flags(
    tmps: list[Path],
    output: Path,
    flags: np.ndarray | None,
    dropped: np.ndarray,
    chunk_sums: list[float],
) -> tuple[int, list[float]]:
    """Move the pass-1 file(s) of the batch's parts to ``output`` atomically: a single one as
    it is when its flags are final (``flags`` None) and no row is ``dropped``; else copied one
    chunk (row group) at a time, in order, without the dropped rows and with ``is_anomaly`` =
    ``flags``. Returns the number of flagged rows and the per-chunk log-likelihood sums of
    the rows kept."""
    final = tmps[0].with_name(output.name)
    if flags is None and not len(dropped) and len(tmps) == 1:
        n_flagged = 0
        with pq.ParquetFile(tmps[0], pre_buffer=False) as source:
            for k in range(source.num_row_groups):
                column = source.read_row_group(k, columns=["is_anomaly"]).column(0)
                n_flagged += int(pc.sum(column).as_py() or 0)
        os.replace(tmps[0], output)
        return n_flagged, chunk_sums
    start, n_flagged, sums = 0, 0, []
    with pq.ParquetWriter(final, pq.read_schema(tmps[0]), **_WRITE_OPTIONS) as writer:
        for table in _row_groups(tmps):
            stop = start + table.num_rows
            mine = dropped[(dropped >= start) & (dropped < stop)] - start
            if len(mine):
                table = table.filter(pa.array(_kept(table.num_rows, mine)))
            if flags is not None:
                index = table.schema.get_field_index("is_anomaly")
                base = start - int(np.searchsorted(dropped, start))
                column = pa.array(flags[base : base + table.num_rows])
                table = table.set_column(index, "is_anomaly", column)
            n_flagged += int(pc.sum(table.column("is_anomaly")).as_py() or 0)
            sums.append(float(table.column("log_likelihood").to_pandas().sum()))
            writer.write_table(table, row_group_size=max(table.num_rows, 1))
            start = stop
    os.replace(final, output)
    for tmp in tmps:
        tmp.unlink()
    return n_flagged, sums


def _row_groups(paths: list[Path]) -> Iterator[pa.Table]:
    """Every row group of the Parquet files, in order, one at a time (see io.iter_rows)."""
    for path in paths:
        with pq.ParquetFile(path, pre_buffer=False) as source:
            for k in range(source.num_row_groups):
                yield source.read_row_group(k)
