"""``safeddl demo --plot FILE`` on a real run: the picture holds every read the run measured
(one marker per read, per run), and every refresh the pipeline started."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from click.testing import CliRunner

from safeddl.cli.demo import DemoSettings, run_demo
from safeddl.cli.main import main
from safeddl.cli.plot import write_plot

pytestmark = [pytest.mark.timeout(120)]

SVG = "{http://www.w3.org/2000/svg}"


def markers(path: Path) -> dict[str, int]:
    root = ElementTree.parse(path).getroot()
    return {g.attrib["id"]: len(list(g.iter(f"{SVG}use")))
            for g in root.iter(f"{SVG}g") if "id" in g.attrib}


def test_the_measured_reads_and_refreshes_are_recorded(safeddl_db: str, tmp_path: Path) -> None:
    settings = DemoSettings(seconds=4, refresh_every=1.0, slow_query_first=0.3,
                            slow_query_seconds=2.0, slow_query_every=4.0)
    result = run_demo(safeddl_db, settings)
    for phase in (result.unguarded, result.guarded):
        assert len(phase.reads) == phase.reader_queries > 0
        assert sum(read.report for read in phase.reads) == phase.report_reads
        assert sum(read.rows == 0 for read in phase.reads) == phase.empty_reads
        assert max(read.latency_ms for read in phase.reads) == phase.reader_max_stall_ms
        assert all(0 <= read.at <= phase.seconds for read in phase.reads)
        assert [read.at for read in phase.reads] == sorted(read.at for read in phase.reads)
        assert len(phase.refreshes) == (phase.refreshes_completed + phase.refreshes_abandoned
                                        + phase.refreshes_failed)
        assert all(0 <= span.start < span.end <= phase.seconds for span in phase.refreshes)
        assert len(phase.slow_query_spans) == phase.slow_queries == 1
    # the stall the table reports is there in the samples: a read that waited behind the
    # TRUNCATE, started while the slow query held its lock
    slow = result.unguarded.slow_query_spans[0]
    stalled = [read for read in result.unguarded.reads if read.latency_ms > 1000]
    assert stalled and all(slow.start <= read.at <= slow.end for read in stalled)

    counts = markers(write_plot(result, tmp_path / "demo.svg"))
    assert counts["reads-without-safeddl"] == result.unguarded.reader_queries
    assert counts["reads-with-safeddl"] == result.guarded.reader_queries
    assert sum(name.startswith("refresh-with-safeddl-") for name in counts) == len(
        result.guarded.refreshes)


def test_cli_demo_writes_the_plot(safeddl_db: str, tmp_path: Path) -> None:
    target = tmp_path / "demo.svg"
    result = CliRunner().invoke(main, ["demo", "--dsn", safeddl_db, "--seconds", "3",
                                       "--plot", str(target)])
    assert result.exit_code == 0, result.output
    assert f"plot written to {target}" in result.output.replace("\n", "")
    assert target.stat().st_size > 10_000
    # the table's read counts are the plot's markers
    row = re.search(r"reads \(of them by reports\)\D+([\d,]+) \(\d+\)\D+([\d,]+) \(", result.output)
    assert row is not None, result.output
    counts = markers(target)
    assert counts["reads-without-safeddl"] == int(row[1].replace(",", ""))
    assert counts["reads-with-safeddl"] == int(row[2].replace(",", ""))


def test_cli_demo_refuses_a_plot_it_cannot_write_before_running(safeddl_db: str,
                                                                tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--dsn", safeddl_db, "--seconds", "3",
                                       "--plot", str(tmp_path / "demo.gif")])
    assert result.exit_code == 2
    assert "name the file *.png or *.svg" in result.output
    assert "reads (of them by reports)" not in result.output
