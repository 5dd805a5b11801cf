"""Reading tables (CSV or Parquet, files or globs) in bounded chunks, writing them atomically."""

from __future__ import annotations

import csv
import glob
import io
import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SUFFIXES = (".parquet", ".pq", ".csv")
#: the column of :func:`iter_rows`' unreadable rows that says why
ROW_ERROR = "reason"


class DataError(ValueError):
    """A data file that cannot be read; the message names the file and the problem."""


def shown(path: Path | str, full: bool = False) -> str:
    """A file's name (or ``full`` path) safe to print, log and store: control characters and
    bytes that are not UTF-8 are escaped, so a message stays one line of valid text."""
    text = str(path) if full else Path(path).name
    return text if text.isprintable() else repr(text)[1:-1]


def expand(pattern: str | Path) -> list[Path]:
    """Files matching a path or glob, sorted; a clear error when there are none."""
    paths = sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())
    if not paths:
        msg = f"no data files match {pattern}"
        raise DataError(msg)
    return paths


def iter_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Yield a file's rows as frames of at most ``chunk_rows`` rows; a CSV row with more
    fields than the header raises :class:`DataError` naming its line (see :func:`iter_rows`)."""
    for rows, unreadable in iter_rows(path, chunk_rows):
        if len(unreadable):
            msg = f"cannot read {shown(path)}: {unreadable[ROW_ERROR].iloc[0]}"
            raise DataError(msg)
        yield rows


def iter_rows(
    path: Path, chunk_rows: int, rows: range | None = None
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """Yield a file's rows in frames of at most ``chunk_rows`` rows (one row group at a time),
    each with the rows of that stretch that cannot be read as a row of the table: CSV rows with
    more fields than the header, as the header's columns (the first fields) plus
    :data:`ROW_ERROR` naming the line. A CSV row with fewer fields is read with the missing
    values empty, so the row's checks quarantine it.

    ``rows`` (Parquet only; ``start`` a multiple of ``chunk_rows``): only those rows of the
    file, reading only the row groups that hold them, in the frames a whole read gives them."""
    suffix = path.suffix.lower()
    none = pd.DataFrame()
    try:
        if suffix in (".parquet", ".pq"):
            # a Python file object: Arrow cannot open names that are not UTF-8 itself.
            # pre_buffer=False: with pre-buffering (pyarrow's default) iter_batches kept every
            # row group it had read resident, so memory grew with the file (~200 B/row here)
            with path.open("rb") as handle, pq.ParquetFile(handle, pre_buffer=False) as file:
                if rows is not None:
                    for frame in _row_range(file, chunk_rows, rows):
                        yield frame, none
                    return
                if file.metadata.num_rows == 0:
                    yield file.schema_arrow.empty_table().to_pandas(), none
                    return
                for batch in file.iter_batches(batch_size=chunk_rows):
                    yield batch.to_pandas(), none
        elif rows is not None:
            msg = f"{shown(path)}: only Parquet files are read by row range"
            raise DataError(msg)
        elif suffix == ".csv":
            yield from _csv_rows(path, chunk_rows)
        else:
            msg = f"{shown(path)}: unsupported file type {suffix!r}; use one of {SUFFIXES}"
            raise DataError(msg)
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        msg = (
            f"cannot read {shown(path)}: it is not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8"
        )
        raise DataError(msg) from exc
    except (pa.ArrowException, pd.errors.ParserError, csv.Error, OSError) as exc:
        msg = f"cannot read {shown(path)}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        raise DataError(msg) from exc
    except pd.errors.EmptyDataError as exc:
        msg = f"{shown(path)} is empty (no header row)"
        raise DataError(msg) from exc


def _row_range(file: pq.ParquetFile, chunk_rows: int, rows: range) -> Iterator[pd.DataFrame]:
    """Rows ``rows`` of a Parquet file in frames of ``chunk_rows`` (the last may be shorter),
    from the row groups that hold them; ``iter_batches`` over the whole file cuts its batches
    at the same rows when ``rows.start`` is a multiple of ``chunk_rows``."""
    meta = file.metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    bounds = np.cumsum([0, *sizes])
    start, stop = rows.start, min(rows.stop, int(bounds[-1]))
    if start >= stop:
        return
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    last = int(np.searchsorted(bounds, stop, side="left"))
    skip, left = start - int(bounds[first]), stop - start
    held = file.schema_arrow.empty_table()
    for batch in file.iter_batches(batch_size=chunk_rows, row_groups=range(first, last)):
        held = pa.concat_tables([held, pa.Table.from_batches([batch])])
        if skip:
            cut = min(skip, held.num_rows)
            held, skip = held.slice(cut), skip - cut
        held = held.slice(0, left)
        while held.num_rows >= chunk_rows:
            yield held.slice(0, chunk_rows).to_pandas()
            held, left = held.slice(chunk_rows), left - chunk_rows
        if not left:
            return
    if held.num_rows:
        yield held.to_pandas()


#: pandas' message for a row with more fields than the header
_TOO_MANY = re.compile(r"Expected \d+ fields in line \d+, saw \d+")


def _csv_rows(path: Path, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """pandas' fast reader; from the first row with too many fields on (pandas refuses the rest
    of the file, or takes the first column for an index when it is the first row), the rest is
    read by :func:`_csv_rows_checked`, which sets such rows apart."""
    _check_csv_header(path)
    reader = pd.read_csv(
        path, chunksize=chunk_rows, dtype=str, keep_default_na=False, na_values=[""]
    )
    done = 0
    try:
        with reader:
            for chunk in reader:
                if not isinstance(chunk.index, pd.RangeIndex):  # a first row too long
                    break
                yield chunk, pd.DataFrame()
                done += len(chunk)
            else:
                return
    except pd.errors.ParserError as exc:
        if not _TOO_MANY.search(str(exc)):
            raise
    yield from _csv_rows_checked(path, chunk_rows, done)


def _csv_rows_checked(
    path: Path, chunk_rows: int, skip: int
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """A CSV's records after the first ``skip`` (blank lines skipped, as pandas does), read by
    the ``csv`` module: rows with more fields than the header are set apart, named by the line
    they start on."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        records = csv.reader(handle, strict=True)
        header = next(records)
        width = len(header)
        # (line the record ends on, record); a quoted line break inside it adds a line
        numbered = ((records.line_num, r) for r in records if r)
        for _ in itertools.islice(numbered, skip):
            pass
        while True:
            good: list[list[str]] = []
            bad: list[list[str]] = []
            reasons: list[str] = []
            for end, record in itertools.islice(numbered, chunk_rows):
                if len(record) > width:
                    start = end - sum(v.count("\n") for v in record)
                    extra = ", ".join(repr(v)[:40] for v in record[width:][:3])
                    reasons.append(
                        f"line {start}: {len(record)} fields where the header has {width}"
                        f" (extra: {extra})"
                    )
                    bad.append(record[:width])
                else:
                    good.append(record + [""] * (width - len(record)))
            if not good and not bad:
                return
            unreadable = _text_frame(bad, header)
            unreadable[ROW_ERROR] = reasons
            yield _text_frame(good, header), unreadable


def _text_frame(rows: list[list[str]], header: list[str]) -> pd.DataFrame:
    """Rows of text as pandas reads them here: string columns, "" as missing."""
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    return frame.mask(frame == "").astype(str) if len(frame) else frame.astype(str)


def _check_csv_header(path: Path) -> None:
    """Refuse a CSV whose header names a column twice (pandas would rename one ``x.1``)."""
    header = pd.read_csv(path, nrows=1, header=None, dtype=str, keep_default_na=False)
    names = [] if header.empty else header.iloc[0].tolist()
    dupes = sorted({name for name in names if names.count(name) > 1})
    if dupes:
        msg = f"{shown(path)}: the header has duplicated column names: {dupes}"
        raise DataError(msg)


def read_table(pattern: str | Path) -> pd.DataFrame:
    """All rows of every file matching ``pattern``, as one frame."""
    frames = [chunk for path in expand(pattern) for chunk in iter_chunks(path, 1_000_000)]
    return pd.concat(frames, ignore_index=True)


def write_atomic(path: Path, write: Callable[[Path], object], tmp_dir: Path | None = None) -> Path:
    """Write ``path`` by ``write(tmp)`` into a temporary file and an atomic rename; the
    temporary file is in ``tmp_dir`` (same file system as ``path``) or beside ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = (tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_parquet_atomic(df: pd.DataFrame, path: Path, tmp_dir: Path | None = None) -> Path:
    """Write ``df`` to ``path`` as Parquet via a temporary file and an atomic rename
    (:func:`write_atomic`)."""
    return write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False), tmp_dir)


def table_bytes(
    frame: pd.DataFrame, suffix: str, csv_text: Callable[[pd.DataFrame], str] | None = None
) -> bytes:
    """``frame`` as the bytes of a file with this suffix: CSV for ``.csv`` (as ``csv_text``
    renders it, else pandas' own CSV), Parquet for any other."""
    if suffix.lower() == ".csv":
        return (csv_text(frame) if csv_text else frame.to_csv(index=False)).encode()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_table(
    frame: pd.DataFrame, path: Path, csv_text: Callable[[pd.DataFrame], str] | None = None
) -> Path:
    """Write ``frame`` as CSV or Parquet, chosen by the suffix of ``path`` (:func:`table_bytes`),
    through an atomic rename."""
    data = table_bytes(frame, path.suffix, csv_text)
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))
