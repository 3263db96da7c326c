"""``safeddl demo --plot``: the picture is drawn from the measured reads of both runs.

No database: the results here are built by hand, with a known number of reads, refreshes
and slow queries, and the files are read back (the SVG's groups, the PNG's pixels).
tests/integration/test_demo_plot.py does the same on a real run.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from safeddl.cli.demo import DemoResult, DemoSettings, PhaseResult, ReadSample, Span
from safeddl.cli.plot import PlotError, check_plot_path, write_plot

SVG = "{http://www.w3.org/2000/svg}"


def phase(guarded: bool, reads: int, stall_every: int) -> PhaseResult:
    samples = tuple(
        ReadSample(at=i * 0.05, latency_ms=2000.0 if not guarded and i % stall_every == 0
                   else 3.0 + i % 4, rows=0 if not guarded and i % stall_every == 1 else 500,
                   report=i % 5 == 0)
        for i in range(reads))
    latencies = sorted(s.latency_ms for s in samples)
    return PhaseResult(
        guarded=guarded, method="m", seconds=reads * 0.05, reader_queries=reads,
        reader_max_stall_ms=latencies[-1], reader_p99_ms=latencies[-2],
        reader_median_ms=latencies[reads // 2], min_rows_seen=min(s.rows for s in samples),
        empty_reads=sum(s.rows == 0 for s in samples), report_reads=reads // 5,
        refreshes_completed=3, refreshes_abandoned=1 if not guarded else 0,
        refreshes_failed=0, lock_timeouts_retried=0, slowest_refresh_ms=2000.0,
        slow_queries=1, reads=samples,
        refreshes=tuple(Span(t, t + 0.4, "completed") for t in (0.0, 1.0, 2.0))
        + ((Span(3.0, 4.0, "abandoned"),) if not guarded else ()),
        slow_query_spans=(Span(0.5, 2.5, "completed"),))


RESULT = DemoResult(DemoSettings(seconds=5, rows=500), "PostgreSQL 18.6",
                    unguarded=phase(False, 60, 10), guarded=phase(True, 90, 10))


def svg_groups(path: Path) -> dict[str, ElementTree.Element]:
    root = ElementTree.parse(path).getroot()
    return {g.attrib["id"]: g for g in root.iter(f"{SVG}g") if "id" in g.attrib}


def test_the_svg_holds_every_read_of_both_runs_and_the_refreshes(tmp_path: Path) -> None:
    target = write_plot(RESULT, tmp_path / "demo.svg")
    groups = svg_groups(target)
    # one marker per measured read, in a group per run
    assert len(list(groups["reads-without-safeddl"].iter(f"{SVG}use"))) == 60
    assert len(list(groups["reads-with-safeddl"].iter(f"{SVG}use"))) == 90
    assert len(list(groups["empty-reads-without-safeddl"].iter(f"{SVG}use"))) == 6
    assert "empty-reads-with-safeddl" not in groups
    refreshes = {name for name in groups if name.startswith("refresh-")}
    assert refreshes == {*(f"refresh-without-safeddl-{n}" for n in range(1, 5)),
                         *(f"refresh-with-safeddl-{n}" for n in range(1, 4))}
    assert {"slow-query-without-safeddl-1", "slow-query-with-safeddl-1"} <= set(groups)
    text = target.read_text(encoding="utf-8")
    assert "without safeddl" in text and "with safeddl" in text


def test_the_png_shows_both_series(tmp_path: Path) -> None:
    from matplotlib import image

    target = write_plot(RESULT, tmp_path / "demo.png")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(target)[..., :3]
    height, width, _ = pixels.shape
    assert (width, height) == (1000, 620)

    def count(rgb: tuple[int, int, int], rows: slice) -> int:
        wanted = [channel / 255 for channel in rgb]
        area = pixels[rows]
        close = (abs(area[..., 0] - wanted[0]) < 0.05) & (abs(area[..., 1] - wanted[1]) < 0.05) \
            & (abs(area[..., 2] - wanted[2]) < 0.05)
        return int(close.sum())

    top, bottom = slice(0, height // 2), slice(height // 2, height)
    red, green = (0xD6, 0x27, 0x28), (0x2C, 0xA0, 0x2C)
    assert count(red, top) > 100 and count(green, bottom) > 100  # the two series' dots
    assert count(green, top) < count(green, bottom)


def test_a_path_that_is_not_png_or_svg_is_refused_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(PlotError, match=r"\*\.png or \*\.svg"):
        check_plot_path(tmp_path / "demo.jpg")
    assert check_plot_path(tmp_path / "demo.SVG").name == "demo.SVG"


def test_without_matplotlib_the_error_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotError, match=r"pip install 'safeddl\[plot\]'"):
        check_plot_path(tmp_path / "demo.png")
