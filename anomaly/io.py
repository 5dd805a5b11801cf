"""Reading tables (CSV or Parquet, files or globs) in bounded chunks, writing them atomically."""

from __future__ import annotations

import glob
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SUFFIXES = (".parquet", ".pq", ".csv")


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
    """Yield a file's rows as frames of at most ``chunk_rows`` rows (one row group at a time)."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            # a Python file object: Arrow cannot open names that are not UTF-8 itself.
            # pre_buffer=False: with pre-buffering (pyarrow's default) iter_batches kept every
            # row group it had read resident, so memory grew with the file (~200 B/row here)
            with path.open("rb") as handle, pq.ParquetFile(handle, pre_buffer=False) as file:
                if file.metadata.num_rows == 0:
                    yield file.schema_arrow.empty_table().to_pandas()
                    return
                for batch in file.iter_batches(batch_size=chunk_rows):
                    yield batch.to_pandas()
        elif suffix == ".csv":
            _check_csv_header(path)
            reader = pd.read_csv(
                path, chunksize=chunk_rows, dtype=str, keep_default_na=False, na_values=[""]
            )
            with reader:
                yield from reader
        else:
            msg = f"{shown(path)}: unsupported file type {suffix!r}; use one of {SUFFIXES}"
            raise DataError(msg)
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start]
        msg = (
            f"cannot read {shown(path)}: it is not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8"
        )
        raise DataError(msg) from exc
    except (pa.ArrowException, pd.errors.ParserError, OSError) as exc:
        msg = f"cannot read {shown(path)}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        raise DataError(msg) from exc
    except pd.errors.EmptyDataError as exc:
        msg = f"{shown(path)} is empty (no header row)"
        raise DataError(msg) from exc


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


def write_parquet_atomic(df: pd.DataFrame, path: Path, tmp_dir: Path | None = None) -> Path:
    """Write ``df`` to ``path`` via a temporary file and an atomic rename; the temporary file
    is in ``tmp_dir`` (same file system as ``path``) or beside ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = (tmp_dir or path.parent) / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
