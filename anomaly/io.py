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
            with pq.ParquetFile(path) as file:
                if file.metadata.num_rows == 0:
                    yield file.schema_arrow.empty_table().to_pandas()
                    return
                for batch in file.iter_batches(batch_size=chunk_rows):
                    yield batch.to_pandas()
        elif suffix == ".csv":
            reader = pd.read_csv(
                path, chunksize=chunk_rows, dtype=str, keep_default_na=False, na_values=[""]
            )
            with reader:
                yield from reader
        else:
            msg = f"{path.name}: unsupported file type {suffix!r}; use one of {SUFFIXES}"
            raise DataError(msg)
    except (pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        msg = f"cannot read {path.name}: {type(exc).__name__}: {exc}"
        raise DataError(msg) from exc
    except pd.errors.EmptyDataError as exc:
        msg = f"{path.name} is empty (no header row)"
        raise DataError(msg) from exc


def read_table(pattern: str | Path) -> pd.DataFrame:
    """All rows of every file matching ``pattern``, as one frame."""
    frames = [chunk for path in expand(pattern) for chunk in iter_chunks(path, 1_000_000)]
    return pd.concat(frames, ignore_index=True)


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> Path:
    """Write ``df`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
