"""Trace loaders: demand (when requests arrive) and capacity (how many spot instances could be had), as numpy.

Every demand format is reduced to one thing, `arrivals_per_tick(...)`: how many requests arrive in each tick of
the run, integers, after the scale factor and the time offset. Formats:

- ``azure_csv``: Azure LLM inference trace, ``TIMESTAMP,ContextTokens,GeneratedTokens``, one row per request
  (timestamps like ``2023-11-16 18:17:03.9799600``; t = 0 is the first row);
- ``minute_counts_csv``: two columns, minute index and request count (the SpotHedge ``Time (min),Requests``
  files); each minute's requests are spread evenly over that minute;
- ``mooncake_jsonl``: Mooncake JSON lines with ``timestamp`` in milliseconds from the start.

Capacity traces are the spot-traces JSON, ``{"metadata": {"gap_seconds": g}, "data": [n, ...]}``: n instances
can be held during the g seconds of each entry.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

DemandFormat = Literal["azure_csv", "minute_counts_csv", "mooncake_jsonl"]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class TraceError(ValueError):
    """A trace file that cannot be read: the message names the file and, where it can, the line."""


# ------------------------------------------------------------------ demand


def _azure_times(path: Path) -> FloatArray:
    times: list[float] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[0].strip().upper() != "TIMESTAMP":
            raise TraceError(f"{path}:1: expected the header TIMESTAMP,ContextTokens,GeneratedTokens")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            text = row[0].strip()
            try:
                # Python's parser takes at most 6 fractional digits; the Azure files have 7.
                head, _, frac = text.partition(".")
                stamp = datetime.fromisoformat(head).timestamp() + (float(f"0.{frac}") if frac else 0.0)
            except ValueError:
                raise TraceError(f"{path}:{line_no}: not a timestamp: {text!r}") from None
            times.append(stamp)
    if not times:
        return np.zeros(0)
    arr = np.asarray(times, dtype=np.float64)
    return np.sort(arr - arr.min())


def _mooncake_times(path: Path) -> FloatArray:
    times: list[float] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                times.append(float(json.loads(line)["timestamp"]) / 1000.0)
            except (ValueError, KeyError, TypeError):
                raise TraceError(f"{path}:{line_no}: expected a JSON object with a numeric 'timestamp'") from None
    arr = np.asarray(times, dtype=np.float64)
    return np.sort(arr - arr.min()) if arr.size else arr


def _minute_counts(path: Path) -> FloatArray:
    counts: dict[int, float] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or len(row) < 2:
                continue
            try:
                minute, count = int(float(row[0])), float(row[1])
            except ValueError:
                if line_no == 1:
                    continue  # the header
                raise TraceError(f"{path}:{line_no}: expected 'minute,count', got {row!r}") from None
            if minute < 0 or count < 0:
                raise TraceError(f"{path}:{line_no}: minute and count must not be negative")
            counts[minute] = counts.get(minute, 0.0) + count
    if not counts:
        return np.zeros(0)
    out = np.zeros(max(counts) + 1)
    for minute, count in counts.items():
        out[minute] = count
    return out


def arrivals_per_tick(
    path: Path,
    fmt: DemandFormat,
    *,
    tick_seconds: float,
    ticks: int,
    scale: float = 1.0,
    offset_seconds: float = 0.0,
    loop: bool = False,
) -> IntArray:
    """Requests arriving in each of `ticks` ticks. Tick i covers trace time [offset + i*tick, offset + (i+1)*tick).

    The scale multiplies the request rate; counts stay integers by rounding the scaled cumulative count, so the
    total is the scaled total rounded, never drifting tick by tick. With `loop`, the trace repeats (its period is
    its length rounded up to a whole minute for counts, the last arrival for request logs)."""
    edges = offset_seconds + tick_seconds * np.arange(ticks + 1, dtype=np.float64)
    if fmt == "minute_counts_csv":
        per_minute = _minute_counts(path)
        period = 60.0 * per_minute.size
        cum_at_minutes = np.concatenate([[0.0], np.cumsum(per_minute)])
        total = float(cum_at_minutes[-1])

        def cumulative(t: FloatArray) -> FloatArray:
            if period == 0:
                return np.zeros_like(t)
            laps = np.floor(t / period) if loop else np.zeros_like(t)
            inside = np.clip(t - laps * period, 0.0, period)
            # Piecewise-linear cumulative count: each minute's requests spread evenly over it.
            within: FloatArray = np.interp(inside / 60.0, np.arange(per_minute.size + 1), cum_at_minutes)
            return laps * total + within

        cum = cumulative(edges)
    else:
        times = _azure_times(path) if fmt == "azure_csv" else _mooncake_times(path)
        if times.size == 0:
            return np.zeros(ticks, dtype=np.int64)
        period = float(times[-1]) + 1e-9
        if loop:
            laps = np.floor(edges / period)
            cum = laps * times.size + np.searchsorted(times, edges - laps * period, side="left")
        else:
            cum = np.searchsorted(times, edges, side="left").astype(np.float64)
    counts: IntArray = np.diff(np.round((cum - cum[0]) * scale)).astype(np.int64)
    out: IntArray = np.maximum(counts, 0)
    return out


# ------------------------------------------------------------------ capacity


def load_capacity_trace(path: Path) -> tuple[float, IntArray]:
    """(gap_seconds, counts) of a spot-traces JSON file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TraceError(f"{path}: cannot read the capacity trace: {exc}") from None
    try:
        gap = float(doc["metadata"]["gap_seconds"])
        data = np.asarray(doc["data"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise TraceError(f'{path}: expected {{"metadata": {{"gap_seconds": g}}, "data": [n, ...]}}') from None
    if gap <= 0 or data.ndim != 1 or data.size == 0 or (data < 0).any():
        raise TraceError(f"{path}: gap_seconds must be positive and data a non-empty list of counts >= 0")
    return gap, data.astype(np.int64)


def capacity_per_tick(
    gap_seconds: float,
    data: IntArray,
    *,
    tick_seconds: float,
    ticks: int,
    offset_seconds: float = 0.0,
    gap_override: float | None = None,
) -> IntArray:
    """The trace's count at the start of every tick; the trace repeats when the run outlasts it."""
    gap = gap_override or gap_seconds
    t = offset_seconds + tick_seconds * np.arange(ticks, dtype=np.float64)
    index = np.floor(t / gap).astype(np.int64) % data.size
    out: IntArray = data[index]
    return out
