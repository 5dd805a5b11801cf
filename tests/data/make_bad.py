"""Write the bad-input corpus: batch files that are broken in one way each, and what must happen.

Run ``python tests/data/make_bad.py`` from the repository root to (re)write ``tests/data/bad/``:
one small file per case plus ``cases.json``, the expected outcome of every case:

* ``rejected``: the whole batch is refused; ``error`` is a regular expression the one-line
  message matches;
* ``scored``: ``rows_in`` rows came in; ``quarantined`` maps a reason (a substring of the
  ``reason`` column) to how many rows carry it, ``flagged`` the same for scored rows flagged with
  a reason (unseen categories).

Cases whose file is made at test time (``"made_at_test_time": true``) are the two
10,000-column files (about 1.6 MB each, too big to commit). ``deliver_as`` is the name the file
gets in the inbox, so names with shell characters, ``..``, newlines or bytes that are not UTF-8
are made in a temporary folder by the test and never committed.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from anomaly.demo_data import ID, generate_normal  # noqa: E402

HERE = Path(__file__).resolve().parent / "bad"
ROWS = 30
#: chunk size the tests score with, so the corpus also crosses chunk boundaries
CHUNK_ROWS = 16


def base(seed: int = 11, n: int = ROWS) -> pd.DataFrame:
    """Normal demo transactions with their timestamps as ISO text (stable in CSV)."""
    frame = generate_normal(n, seed=seed)
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S%z")
    return frame


def csv_bytes(frame: pd.DataFrame, **options: Any) -> bytes:
    return frame.to_csv(index=False, **options).encode("utf-8")


def parquet_bytes(frame: pd.DataFrame | pa.Table) -> bytes:
    table = (
        frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def wide_frame(with_required: bool) -> pd.DataFrame:
    """20 rows with 10,000 columns: the feature columns (or not) plus numbered extras."""
    frame = base(seed=12, n=20)
    if not with_required:
        frame = frame[[ID]]
    extra = 10_000 - frame.shape[1]
    values = np.arange(20 * extra, dtype=np.int64).reshape(20, extra) % 97
    wide = pd.DataFrame(values, columns=[f"extra_{i}" for i in range(extra)])
    return pd.concat([frame, wide], axis=1)


def write_wide(folder: Path) -> None:
    """The two cases too big to commit (10,000 columns)."""
    (folder / "wide_10000_columns.csv").write_bytes(csv_bytes(wide_frame(True)))
    (folder / "wide_10000_columns_no_features.csv").write_bytes(csv_bytes(wide_frame(False)))


def cases() -> list[tuple[dict[str, Any], bytes | None]]:
    """Every case: its expectation and its file's bytes (None: made at test time)."""
    out: list[tuple[dict[str, Any], bytes | None]] = []

    def add(name: str, suffix: str, data: bytes | None, outcome: str, **expect: Any) -> None:
        spec = {"name": name, "file": f"{name}{suffix}", "outcome": outcome, **expect}
        if outcome == "scored":
            spec.setdefault("quarantined", {})
            spec.setdefault("flagged", {})
        out.append((spec, data))

    clean = base()
    good_csv = csv_bytes(clean)
    good_parquet = parquet_bytes(clean)

    # ---- baselines
    add("clean_csv", ".csv", good_csv, "scored", rows_in=ROWS)
    add("clean_parquet", ".parquet", good_parquet, "scored", rows_in=ROWS)

    # ---- truncated or corrupt files
    add(
        "truncated_parquet",
        ".parquet",
        good_parquet[: len(good_parquet) // 2],
        "rejected",
        error=r"cannot read .*parquet",
    )
    footer = bytearray(good_parquet)
    footer[-12:-4] = b"\xff" * 8  # footer length and metadata garbled
    add(
        "corrupt_parquet_footer",
        ".parquet",
        bytes(footer),
        "rejected",
        error=r"cannot read .*parquet",
    )
    add("parquet_magic_only", ".parquet", b"PAR1PAR1", "rejected", error=r"cannot read")
    add("empty_parquet_file", ".parquet", b"", "rejected", error=r"empty|cannot read")
    add("parquet_bytes_named_csv", ".csv", good_parquet, "rejected", error=r"not UTF-8|cannot read")
    add("csv_text_named_parquet", ".parquet", good_csv, "rejected", error=r"cannot read")
    add(
        "random_bytes",
        ".csv",
        np.random.default_rng(0).bytes(4000),
        "rejected",
        error=r"not UTF-8|cannot read",
    )
    add(
        "gzip_named_csv",
        ".csv",
        gzip.compress(good_csv, mtime=0),
        "rejected",
        error=r"not UTF-8|cannot read",
    )
    lines = good_csv.decode().splitlines(keepends=True)
    cut = "".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 3]  # last row cut short
    add(
        "truncated_csv_mid_row",
        ".csv",
        cut.encode(),
        "scored",
        rows_in=ROWS,
        quarantined={"missing value": 1},
    )
    quoted = csv_bytes(clean, quoting=1).decode()  # every field quoted
    add(
        "truncated_csv_inside_quote",
        ".csv",
        quoted[: quoted.rindex('"') - 3].encode(),
        "rejected",
        error=r"cannot read .*(EOF|quote|string)",
    )
    extra_field = "".join(lines[:5]) + lines[5].rstrip("\n") + ",surplus\n" + "".join(lines[6:])
    add(  # pandas refused the whole batch: "Expected 9 fields in line 6, saw 10"
        "csv_row_with_extra_field",
        ".csv",
        extra_field.encode(),
        "scored",
        rows_in=ROWS,
        quarantined={"line 6: 10 fields where the header has 9 (extra: 'surplus')": 1},
    )
    first_long = lines[0] + lines[1].rstrip("\n") + ",x\n" + "".join(lines[2:])
    add(  # pandas took the first column of every row for an index, shifting the others
        "csv_first_row_with_extra_field",
        ".csv",
        first_long.encode(),
        "scored",
        rows_in=ROWS,
        quarantined={"line 2: 10 fields where the header has 9": 1},
    )
    several = list(lines)
    for i, surplus in [(3, ",a,b"), (17, ",c"), (29, ",,")]:  # chunks of 16 rows
        several[i] = several[i].rstrip("\n") + surplus + "\n"
    several[20] = ",".join(several[20].split(",")[:5]) + "\n"  # and one row cut short
    add(
        "csv_rows_with_extra_fields_across_chunks",
        ".csv",
        "".join(several).encode(),
        "scored",
        rows_in=ROWS,
        quarantined={
            "line 4: 11 fields": 1,
            "line 18: 10 fields": 1,
            "line 30: 11 fields": 1,
            "fields where the header has 9": 3,
            "missing value": 1,
        },
    )
    broken_line = clean.copy()
    broken_line.loc[2, "merchant_category"] = "two\nlines"
    text = csv_bytes(broken_line).decode().splitlines(keepends=True)
    text[9] = text[9].rstrip("\n") + ",surplus\n"  # record 8 starts on line 10 (one quoted break)
    add(
        "csv_extra_field_after_quoted_line_break",
        ".csv",
        "".join(text).encode(),
        "scored",
        rows_in=ROWS,
        quarantined={"line 10: 10 fields": 1, "control character U+000A in merchant_category": 1},
    )
    add(  # pandas kept the NUL, and the category was merely unseen
        "nul_bytes_csv",
        ".csv",
        good_csv.replace(b"grocery", b"groc\x00ery", 1),
        "scored",
        rows_in=ROWS,
        quarantined={"control character U+0000 in merchant_category": 1},
    )
    stamp = clean.loc[4, "timestamp"]
    nul_stamp = stamp[:12] + "\x00" + stamp[12:]  # was read as another date, silently
    add(
        "nul_byte_in_timestamp",
        ".csv",
        good_csv.replace(stamp.encode(), nul_stamp.encode(), 1),
        "scored",
        rows_in=ROWS,
        quarantined={"control character U+0000 in timestamp": 1},
    )
    controls = clean.astype({ID: object, "channel": object, "merchant_category": object})
    controls.loc[1, "channel"] = "online\x1b[2J"  # a terminal escape
    controls.loc[2, ID] = "tx\x07bell"
    controls.loc[3, "merchant_category"] = "fuel\x08"  # a backspace
    controls.loc[4, "merchant_category"] = "gro\tcery"  # a tab is not a control here
    add(
        "control_characters_csv",
        ".csv",
        csv_bytes(controls),
        "scored",
        rows_in=ROWS,
        quarantined={
            "control character U+001B in channel": 1,
            f"control character U+0007 in {ID}": 1,
            "control character U+0008 in merchant_category": 1,
        },
        flagged={"unseen category in merchant_category: 'gro\\tcery'": 1},
    )
    nul_parquet = clean.astype({"merchant_category": object})
    nul_parquet.loc[6, "merchant_category"] = "fuel\x00"
    add(
        "nul_byte_in_parquet_string",
        ".parquet",
        parquet_bytes(nul_parquet),
        "scored",
        rows_in=ROWS,
        quarantined={"control character U+0000 in merchant_category": 1},
    )

    # ---- delimiters, encodings, BOM, line endings
    add(
        "semicolon_delimiter",
        ".csv",
        csv_bytes(clean, sep=";"),
        "rejected",
        error=r"missing required column",
    )
    add(
        "tab_delimiter",
        ".csv",
        csv_bytes(clean, sep="\t"),
        "rejected",
        error=r"missing required column",
    )
    accented = clean.assign(**{ID: clean[ID] + "-café"})
    add(
        "latin1_encoding",
        ".csv",
        accented.to_csv(index=False).encode("latin-1"),
        "rejected",
        error=r"not UTF-8 text",
    )
    add(
        "utf16_encoding",
        ".csv",
        clean.to_csv(index=False).encode("utf-16"),
        "rejected",
        error=r"not UTF-8 text",
    )
    add("utf8_bom", ".csv", b"\xef\xbb\xbf" + good_csv, "scored", rows_in=ROWS)
    add("crlf_line_endings", ".csv", good_csv.replace(b"\n", b"\r\n"), "scored", rows_in=ROWS)

    # ---- empty and header-only
    add("empty_csv", ".csv", b"", "rejected", error=r"empty")
    add("blank_lines_only", ".csv", b"\n\n\n", "rejected", error=r"empty")
    add("header_only_csv", ".csv", good_csv.split(b"\n")[0] + b"\n", "scored", rows_in=0)
    add(
        "header_only_wrong_columns",
        ".csv",
        b"a,b,c\n",
        "rejected",
        error=r"missing required column",
    )
    add("zero_row_parquet", ".parquet", parquet_bytes(clean.iloc[:0]), "scored", rows_in=0)

    # ---- ids
    dup = clean.copy()
    dup.loc[[4, 9], ID] = dup.loc[3, ID]
    add(
        "duplicate_ids",
        ".csv",
        csv_bytes(dup),
        "scored",
        rows_in=ROWS,
        quarantined={"duplicate id": 2},
    )
    across = clean.copy()
    across.loc[ROWS - 2, ID] = across.loc[1, ID]  # rows 1 and 28 are in different chunks
    add(
        "duplicate_ids_across_chunks",
        ".parquet",
        parquet_bytes(across),
        "scored",
        rows_in=ROWS,
        quarantined={"duplicate id": 1},
    )
    missing = clean.copy()
    missing.loc[[2, 5], ID] = ""
    missing.loc[7, ID] = "   "
    add(
        "missing_ids_csv",
        ".csv",
        csv_bytes(missing),
        "scored",
        rows_in=ROWS,
        quarantined={"missing id": 3},
    )
    missing_pq = clean.copy()
    missing_pq.loc[[0, 29], ID] = None
    add(
        "missing_ids_parquet",
        ".parquet",
        parquet_bytes(missing_pq),
        "scored",
        rows_in=ROWS,
        quarantined={"missing id": 2},
    )

    # ---- columns
    header, body = good_csv.split(b"\n", 1)
    add(
        "duplicate_columns_csv",
        ".csv",
        header + b",amount\n" + body.replace(b"\n", b",1\n"),
        "rejected",
        error=r"duplicated column",
    )
    table = pa.Table.from_pandas(clean, preserve_index=False)
    twice = table.append_column("amount", table.column("amount"))
    add(
        "duplicate_columns_parquet",
        ".parquet",
        parquet_bytes(twice),
        "rejected",
        error=r"duplicated column",
    )
    add(
        "missing_column",
        ".parquet",
        parquet_bytes(clean.drop(columns=["distance_km"])),
        "rejected",
        error=r"missing required column.*distance_km",
    )
    add(
        "renamed_column",
        ".csv",
        csv_bytes(clean.rename(columns={"amount": "Amount"})),
        "rejected",
        error=r"'amount' \(found 'Amount'\?\)",
    )
    add(
        "padded_column_name",
        ".csv",
        csv_bytes(clean.rename(columns={"hour": " hour"})),
        "rejected",
        error=r"'hour' \(found ' hour'\?\)",
    )
    add(
        "extra_columns",
        ".parquet",
        parquet_bytes(clean.assign(note="x", score=1.5)),
        "scored",
        rows_in=ROWS,
    )
    add("reordered_columns", ".csv", csv_bytes(clean[clean.columns[::-1]]), "scored", rows_in=ROWS)
    add("one_column", ".csv", csv_bytes(clean[[ID]]), "rejected", error=r"missing required")
    add("wide_10000_columns", ".csv", None, "scored", rows_in=20, made_at_test_time=True)
    add(
        "wide_10000_columns_no_features",
        ".csv",
        None,
        "rejected",
        error=r"missing required column.*10000 column",
        made_at_test_time=True,
    )

    # ---- types
    as_text = clean.astype({c: str for c in ("amount", "hour", "distance_km")})
    add("numbers_as_text_parquet", ".parquet", parquet_bytes(as_text), "scored", rows_in=ROWS)
    add(
        "ids_as_integers",
        ".parquet",
        parquet_bytes(clean.assign(**{ID: range(ROWS)})),
        "scored",
        rows_in=ROWS,
    )
    add(
        "categories_as_integers",
        ".parquet",
        parquet_bytes(clean.assign(channel=np.arange(ROWS) % 3)),
        "scored",
        rows_in=ROWS,
        flagged={"unseen category in channel": ROWS},
    )
    add(
        "dictionary_encoded_columns",
        ".parquet",
        parquet_bytes(clean.astype({"merchant_category": "category", "amount": "category"})),
        "scored",
        rows_in=ROWS,
    )
    add(
        "boolean_numeric_column",
        ".parquet",
        parquet_bytes(clean.assign(tx_last_24h=np.arange(ROWS) % 2 == 0)),
        "scored",
        rows_in=ROWS,
    )
    nested = pa.Table.from_pandas(clean, preserve_index=False).set_column(
        2, "amount", pa.array([[1.0, 2.0]] * ROWS)
    )
    add(
        "list_in_numeric_column",
        ".parquet",
        parquet_bytes(nested),
        "scored",
        rows_in=ROWS,
        quarantined={"non-numeric value in amount": ROWS},
    )
    nulls = pa.Table.from_pandas(clean, preserve_index=False).set_column(3, "hour", pa.nulls(ROWS))
    add(
        "null_typed_column",
        ".parquet",
        parquet_bytes(nulls),
        "scored",
        rows_in=ROWS,
        quarantined={"missing value in hour": ROWS},
    )
    add(
        "epoch_int_timestamps",
        ".parquet",
        parquet_bytes(clean.assign(timestamp=np.arange(ROWS) * 10**9)),
        "scored",
        rows_in=ROWS,
    )

    # ---- values
    nan = clean.copy()
    nan.loc[[1, 2], "amount"] = np.nan
    nan.loc[3, "hour"] = np.nan
    add(
        "nan_values",
        ".parquet",
        parquet_bytes(nan),
        "scored",
        rows_in=ROWS,
        quarantined={"missing value in amount": 2, "missing value in hour": 1},
    )
    inf = clean.copy()
    inf.loc[4, "distance_km"] = np.inf
    inf.loc[5, "amount"] = -np.inf
    add(
        "infinite_values",
        ".parquet",
        parquet_bytes(inf),
        "scored",
        rows_in=ROWS,
        quarantined={"infinite value in distance_km": 1, "infinite value in amount": 1},
    )
    huge = clean.copy()
    huge.loc[6, "amount"] = 1e308
    huge.loc[7, "hour"] = -1e308
    huge.loc[8, "account_age_days"] = 1e300
    add("huge_values", ".parquet", parquet_bytes(huge), "scored", rows_in=ROWS)
    text = clean.astype(str)
    text.loc[1, "amount"] = "N/A"
    text.loc[2, "hour"] = "twelve"
    text.loc[3, "distance_km"] = "12,5"
    text.loc[4, "tx_last_24h"] = "NaN"
    text.loc[5, "account_age_days"] = "1" * 400  # beyond float range
    text.loc[6, "amount"] = "inf"
    add(
        "strings_in_numeric_columns",
        ".csv",
        csv_bytes(text),
        "scored",
        rows_in=ROWS,
        quarantined={"non-numeric value": 4, "infinite value": 2},
    )
    add(
        "empty_numeric_fields",
        ".csv",
        csv_bytes(clean.assign(amount=[""] * 3 + list(clean["amount"][3:]))),
        "scored",
        rows_in=ROWS,
        quarantined={"missing value in amount": 3},
    )
    unseen = clean.copy()
    unseen.loc[[0, 1], "merchant_category"] = "casino"
    unseen.loc[2, "channel"] = "carrier pigeon"
    add(
        "unseen_categories",
        ".csv",
        csv_bytes(unseen),
        "scored",
        rows_in=ROWS,
        flagged={"unseen category in merchant_category": 2, "unseen category in channel": 1},
    )
    multiline = clean.copy()
    multiline.loc[3, "merchant_category"] = 'line one\nline "two", three'
    add(
        "quoted_newline_in_field",
        ".csv",
        csv_bytes(multiline),
        "scored",
        rows_in=ROWS,
        quarantined={"control character U+000A in merchant_category": 1},
    )
    stamps = clean.copy()
    stamps.loc[0, "timestamp"] = "2024-03-05 10:00:00"
    stamps.loc[1, "timestamp"] = "2024-03-05T10:00:00+05:30"
    stamps.loc[2, "timestamp"] = "05/03/2024 10:00"
    stamps.loc[3, "timestamp"] = "yesterday"
    stamps.loc[4, "timestamp"] = ""
    stamps.loc[5, "timestamp"] = "2024-02-30T00:00:00Z"  # no such day
    add(
        "mixed_timestamps",
        ".csv",
        csv_bytes(stamps),
        "scored",
        rows_in=ROWS,
        quarantined={"timestamp": 3},
    )

    # ---- file names (the content is clean; the inbox name is what is tested)
    for name, deliver_as in [
        ("name_shell_substitution", "$(touch pwned).csv"),
        ("name_shell_separators", "a; touch pwned2 && echo `id` | cat > y.csv"),
        ("name_spaces", "my batch (1).csv"),
        ("name_unicode", "données été ✓ 数据.csv"),
        ("name_dotdot_escaped", "..%2F..%2Fescape.csv"),
        ("name_backslash_traversal", "..\\..\\escape.csv"),
        ("name_leading_dash", "-rf --no-preserve-root.csv"),
        ("name_dots_only", "...csv"),
        ("name_newline", "line\nbreak.csv"),
        ("name_not_utf8", "bytes-\udcff\udcfe.csv"),  # the bytes ff fe: not UTF-8
        ("name_very_long", "x" * 240 + ".csv"),
    ]:
        add(name, ".csv", good_csv, "scored", rows_in=ROWS, deliver_as=deliver_as)
    add(
        "name_not_utf8_parquet",
        ".parquet",
        good_parquet,
        "scored",
        rows_in=ROWS,
        deliver_as="bytes-\udcfe.parquet",
    )
    broken = good_parquet[:100]
    add(
        "name_not_utf8_corrupt",
        ".parquet",
        broken,
        "rejected",
        error=r"cannot read bytes-\\udcff",
        deliver_as="bytes-\udcff.parquet",
    )
    add(
        "name_newline_corrupt",
        ".parquet",
        broken,
        "rejected",
        error=r"cannot read line\\nbreak",
        deliver_as="line\nbreak.parquet",
    )
    add(
        "name_very_long_corrupt",
        ".parquet",
        broken,
        "rejected",
        error=r"cannot read y{200}",
        deliver_as="y" * 240 + ".parquet",
    )
    add(
        "symlink_out_of_inbox",
        ".csv",
        good_csv,
        "rejected",
        error=r"symbolic link",
        deliver_as="link.csv",
        symlink=True,
    )
    return out


def write_corpus(folder: Path = HERE) -> list[dict[str, Any]]:
    """Write every committed case file and ``cases.json`` into ``folder``; the specs."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for spec, data in cases():
        if data is not None:
            (folder / spec["file"]).write_bytes(data)
        specs.append(spec)
    (folder / "cases.json").write_text(json.dumps(specs, indent=1, ensure_ascii=True) + "\n")
    return specs


if __name__ == "__main__":
    written = write_corpus()
    print(f"wrote {len(written)} cases to {HERE}")
