"""Trace loaders: each demand format reduced to per-tick arrivals; the spot-traces capacity JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoscaler.sim.traces import TraceError, arrivals_per_tick, capacity_per_tick, load_capacity_trace


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:17:03.9799600,4808,10
2023-11-16 18:17:04.0319600,3180,8
2023-11-16 18:17:40.5000000,100,1
2023-11-16 18:18:35.0000000,100,1
"""


def test_azure_csv_bins_requests_by_tick(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", AZURE)
    got = arrivals_per_tick(path, "azure_csv", tick_seconds=30, ticks=4)
    # t = 0, 0.05, 36.5, 91.0 s from the first request
    assert got.tolist() == [2, 1, 0, 1]


def test_azure_csv_scale_and_offset(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", AZURE)
    assert arrivals_per_tick(path, "azure_csv", tick_seconds=30, ticks=3, scale=2).tolist() == [4, 2, 0]
    assert arrivals_per_tick(path, "azure_csv", tick_seconds=30, ticks=3, offset_seconds=30).tolist() == [1, 0, 1]


def test_azure_csv_loop_repeats_the_trace(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", AZURE)
    once = arrivals_per_tick(path, "azure_csv", tick_seconds=10, ticks=40, loop=False).sum()
    looped = arrivals_per_tick(path, "azure_csv", tick_seconds=10, ticks=40, loop=True).sum()
    assert once == 4 and looped > 4


def test_azure_csv_bad_timestamp_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n")
    with pytest.raises(TraceError, match=r"a\.csv:2:"):
        arrivals_per_tick(path, "azure_csv", tick_seconds=30, ticks=1)


def test_minute_counts_spread_evenly_over_the_minute(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "Time (min),Requests\n0,60\n1,0\n2,30\n")
    got = arrivals_per_tick(path, "minute_counts_csv", tick_seconds=30, ticks=6)
    assert got.tolist() == [30, 30, 0, 0, 15, 15]
    # a fractional scale keeps the total (rounded cumulative counts, no drift)
    scaled = arrivals_per_tick(path, "minute_counts_csv", tick_seconds=10, ticks=18, scale=0.1)
    assert scaled.sum() == 9


def test_mooncake_jsonl_milliseconds(tmp_path: Path) -> None:
    lines = [{"timestamp": ms, "input_length": 1, "output_length": 1, "hash_ids": []} for ms in (0, 500, 31000)]
    path = write(tmp_path, "t.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    assert arrivals_per_tick(path, "mooncake_jsonl", tick_seconds=30, ticks=2).tolist() == [2, 1]


def test_capacity_trace_resampled_to_ticks_and_repeated(tmp_path: Path) -> None:
    path = write(tmp_path, "s.json", json.dumps({"metadata": {"gap_seconds": 60}, "data": [2, 0, 1]}))
    gap, data = load_capacity_trace(path)
    assert gap == 60 and data.tolist() == [2, 0, 1]
    got = capacity_per_tick(gap, data, tick_seconds=30, ticks=8)
    assert got.tolist() == [2, 2, 0, 0, 1, 1, 2, 2]
    assert capacity_per_tick(gap, data, tick_seconds=30, ticks=2, gap_override=30).tolist() == [2, 0]
    assert np.issubdtype(got.dtype, np.integer)


def test_capacity_trace_shape_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "s.json", json.dumps({"data": [1]}))
    with pytest.raises(TraceError, match="gap_seconds"):
        load_capacity_trace(path)
