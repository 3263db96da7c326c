"""Caches keyed by statement text: bounded by entries and by bytes, oldest first, and
their byte estimate is not below what the entries really hold (measured with
tracemalloc)."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from safeddl.analysis import analyze_statement
from safeddl.analysis.analyzer import READINGS
from safeddl.caches import LARGEST_SHARE, MiB, TextCache


def test_bounded_by_entries_and_by_bytes_oldest_first() -> None:
    cache: TextCache[str, int] = TextCache("test", entries=3, max_bytes=10 * MiB,
                                           per_char=1.0, overhead=0)
    for i in range(5):
        cache.put(f"text {i}", i, f"text {i}")
    assert list(cache) == ["text 2", "text 3", "text 4"] and cache["text 4"] == 4
    big: TextCache[str, int] = TextCache("test", entries=1000, max_bytes=20_000,
                                         per_char=1.0, overhead=100)
    for i in range(100):
        text = f"SELECT {i} " + "x" * 1000
        big.put(text, i, text)
    assert 0 < big.bytes <= 20_000 and len(big) == 17  # ~1.15 KB each
    assert f"SELECT 99 {'x' * 1000}" in big and "SELECT 0 " + "x" * 1000 not in big
    big.put(next(iter(big)), -1, "small")  # the same key again: counted once
    assert len(big) == 17 and big.bytes <= 20_000
    big.forget()
    assert not big and big.bytes == 0


def test_an_entry_too_large_is_not_kept_and_keeps_the_others() -> None:
    cache: TextCache[str, int] = TextCache("test", entries=1000, max_bytes=MiB,
                                           per_char=1.0, overhead=100)
    for i in range(100):
        cache.put(f"SELECT {i}", i, f"SELECT {i}")
    held = cache.bytes
    large = "INSERT INTO t VALUES " + ",".join(["(1)"] * 100_000)  # 400 KB > 1 MiB / 16
    assert cache.put(large, -1, large) == -1
    assert large not in cache and len(cache) == 100 and cache.bytes == held
    fits = "x" * (MiB // LARGEST_SHARE - 1000)
    cache.put(fits, 1, fits)
    assert fits in cache and len(cache) == 101


def distinct_statement(i: int, columns: int = 30) -> str:
    assignments = ", ".join(f"c{j} = {i * 1000 + j}" for j in range(columns))
    return f"UPDATE orders SET {assignments} WHERE id = {i}"


def test_readings_hold_no_more_than_their_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    READINGS.forget()
    monkeypatch.setattr(READINGS, "max_bytes", MiB // 2)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100):
            analyze_statement(distinct_statement(i))
        gc.collect()
        held, charged = tracemalloc.get_traced_memory()[0] - before, READINGS.bytes
        assert len(READINGS) == 100 and held <= charged  # the estimate is not too low
        for i in range(100, 700):  # ~2 MB of readings: the byte bound decides
            analyze_statement(distinct_statement(i))
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        READINGS.forget()
    assert READINGS.bytes <= MiB // 2 and len(READINGS) < 200
    assert grown < MiB, grown  # flat: 700 readings would hold about 2 MiB
