"""``safeddl demo --plot FILE``: the readers' latency over time, without and with safeddl.

One panel per run, on the same axes: every read the dashboards and reports made (when it
started, how long it took), the refreshes shaded where they ran (red where one was
abandoned or failed), the slow analytical queries shaded grey, and the reads that found
the table empty marked with a cross. Everything drawn comes from the measured
:class:`~safeddl.cli.demo.PhaseResult` of each run, nothing is smoothed.

matplotlib is optional (``pip install 'safeddl[plot]'``); it is imported only here, with
its non-interactive Agg backend, so no display is needed. The format follows the file's
suffix: ``.png`` or ``.svg``. In an SVG each series is a group with an id
(``reads-without-safeddl``, ``reads-with-safeddl``, ``refresh-with-safeddl-3``, ...), so
tools (and the tests) can find them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from safeddl.cli.demo import DemoResult, PhaseResult, seconds_text

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes

FORMATS = (".png", ".svg")
PLOT_EXTRA = "pip install 'safeddl[plot]'"

_COLOURS = {False: "#d62728", True: "#2ca02c"}  # without safeddl: red; with: green
_REFRESH = "#1f77b4"
_REFRESH_FAILED = "#ff7f0e"  # abandoned or failed
_SLOW_QUERY = "#7f7f7f"


class PlotError(ValueError):
    """The plot cannot be written (the message says why and what to do)."""


def check_plot_path(path: str | Path) -> Path:
    """``path`` if its suffix is a format the plot can be written in and matplotlib is
    installed; checked before the demo runs, so a typo does not cost a whole run."""
    target = Path(path)
    if target.suffix.lower() not in FORMATS:
        raise PlotError(f"{target.name}: the plot is written as PNG or SVG; name the file "
                        f"*.png or *.svg")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError(f"--plot needs matplotlib: {PLOT_EXTRA}") from None
    return target


def phase_id(phase: PhaseResult) -> str:
    return "with-safeddl" if phase.guarded else "without-safeddl"


def write_plot(result: DemoResult, path: str | Path, *, dpi: int = 100) -> Path:
    """Draw both runs of ``result`` into ``path`` (PNG or SVG, by suffix)."""
    target = check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6.2), dpi=dpi, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, sharey=True)
    phases = (result.unguarded, result.guarded)
    latencies = [read.latency_ms for phase in phases for read in phase.reads]
    floor = max(0.1, min(latencies, default=1.0) / 2)
    ceiling = max(max(latencies, default=10.0) * 2, result.settings.lock_timeout * 1000 * 2)
    length = max(result.settings.seconds, *(phase.seconds for phase in phases))
    for axes, phase in zip((top, bottom), phases):
        _draw_phase(axes, phase, result.settings.rows)
        axes.set_yscale("log")
        axes.set_ylim(floor, ceiling)
        axes.set_xlim(0, length)
        axes.set_ylabel("read latency (ms)")
        axes.grid(True, which="major", axis="y", alpha=0.3)
    bottom.set_xlabel("seconds into the run (each dot: one read, at the time it started)")
    handles, labels = [], []
    for axes in (top, bottom):
        for handle, label in zip(*axes.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="outside lower center", ncols=len(labels),
                  fontsize="small", frameon=False)
    figure.suptitle(f"Dashboard and report reads of silver_rates while a pipeline refreshes "
                    f"it ({result.server})", fontsize="medium")
    figure.savefig(target, format=target.suffix.lower().lstrip("."), dpi=dpi)
    return target


def _draw_phase(axes: Axes, phase: PhaseResult, rows: int) -> None:
    name = phase_id(phase)
    colour = _COLOURS[phase.guarded]
    for number, span in enumerate(phase.slow_query_spans, start=1):
        axes.axvspan(span.start, span.end, color=_SLOW_QUERY, alpha=0.12, linewidth=0,
                     gid=f"slow-query-{name}-{number}",
                     label="slow analytical query" if number == 1 else None)
    labelled: set[bool] = set()
    for number, span in enumerate(phase.refreshes, start=1):
        ok = span.outcome == "completed"
        label = None if ok in labelled else (
            "refresh transaction" if ok else "refresh abandoned or failed")
        labelled.add(ok)
        axes.axvspan(span.start, span.end, ymin=0.0, ymax=0.04,
                     color=_REFRESH if ok else _REFRESH_FAILED, alpha=0.8, linewidth=0,
                     gid=f"refresh-{name}-{number}", label=label)
    times = [read.at for read in phase.reads]
    latencies = [read.latency_ms for read in phase.reads]
    (line,) = axes.plot(times, latencies, color=colour, linestyle="none", marker="o",
                        markersize=2.2, markeredgewidth=0, label=f"reads {name.replace('-', ' ')}")
    line.set_gid(f"reads-{name}")
    empty = [read for read in phase.reads if read.rows == 0]
    if empty:
        (marks,) = axes.plot([read.at for read in empty], [read.latency_ms for read in empty],
                             linestyle="none", marker="x", color="black", markersize=6,
                             label="read found the table empty")
        marks.set_gid(f"empty-reads-{name}")
    title = "with safeddl" if phase.guarded else "without safeddl"
    axes.set_title(f"{title}: {phase.method}; max stall {seconds_text(phase.reader_max_stall_ms)}"
                   f", p99 {seconds_text(phase.reader_p99_ms)}, fewest rows seen "
                   f"{phase.min_rows_seen:,} of {rows:,}", fontsize="small", loc="left",
                   color=colour)


__all__ = ["FORMATS", "PLOT_EXTRA", "PlotError", "check_plot_path", "phase_id", "write_plot"]
