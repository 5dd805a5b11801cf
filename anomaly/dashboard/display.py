"""How values are written on the pages: times in the configured zone, typical values in each
column's kind, p-values at the calibration floor."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd


def when(value: object, zone: str = "UTC") -> str:
    """A time as ISO-8601 to the second in ``zone`` (naive times are UTC); other text as is."""
    if value is None or value == "":
        return ""
    try:
        stamp = pd.Timestamp(value)  # datetimes, ISO text with nanoseconds, epoch nanoseconds
    except (TypeError, ValueError):
        return str(value)
    if pd.isna(stamp):
        return str(value)
    moment: datetime = stamp.to_pydatetime(warn=False)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(ZoneInfo(zone)).replace(microsecond=0).isoformat()


def is_integer_column(feature: str, profile: dict[str, Any] | None) -> bool:
    """Whether a numeric column holds whole numbers in training (the profile says so; older
    profiles: all its training quantiles are whole)."""
    stats = ((profile or {}).get("numeric") or {}).get(feature)
    if not stats:
        return False
    if "integer" in stats:
        return bool(stats["integer"])
    quantiles = [v for k, v in stats.items() if k.startswith("q")]
    return bool(quantiles) and all(float(v).is_integer() for v in quantiles)


def typical(feature: str, value: object, profile: dict[str, Any] | None) -> object:
    """A typical value in its column's kind: whole numbers rounded for integer columns, a
    category as its name (never a number's formatting)."""
    categorical = ((profile or {}).get("categorical") or {}).get(feature)
    if categorical is not None:
        return "" if value is None else str(value)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and math.isfinite(value) and is_integer_column(feature, profile):
        return round(value)
    return value


def p_value_text(p: float, n_cal: int | None) -> str:
    """A conformal p-value; at its floor 1/(n+1), where it separates nothing, "< 1/(n+1)"."""
    if n_cal and p <= (1 + 1e-9) / (n_cal + 1):
        return f"< 1/{n_cal + 1}"
    return f"{p:.3g}"
