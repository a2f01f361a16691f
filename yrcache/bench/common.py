# SPDX-License-Identifier: Apache-2.0
"""What every benchmark shares: sizes, a description of the machine, the summary of repeated
samples, the text table, the bar chart, notes and progress."""
from __future__ import annotations

import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def fmt_size(n: int) -> str:
    """262144 -> ``"256KiB"``; exact multiples only, else bytes."""
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"


def fs_of(path: str) -> dict[str, str]:
    """File system type, device and mount point holding ``path`` (longest /proc/mounts match)."""
    real = os.path.realpath(path)
    best = {"fstype": "unknown", "device": "", "mountpoint": ""}
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best["mountpoint"]):
                    best = {"fstype": parts[2], "device": parts[0], "mountpoint": mnt}
    except OSError:
        pass
    return best


def _run(cmd: list[str], cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_sha() -> str | None:
    """The commit of the working tree the package was imported from (None when not a checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")) or shutil.which("git") is None:
        return None
    sha = _run(["git", "rev-parse", "HEAD"], cwd=root)
    if sha and _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root):
        sha += "-dirty"
    return sha


def sysinfo(directory: str) -> dict[str, Any]:
    """Kernel, CPUs, file system and O_DIRECT support of ``directory``, yrcache build, tools."""
    import yrcache

    info = yrcache.build_info(directory)
    fio = shutil.which("fio")
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    try:
        cpus_usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus_usable = os.cpu_count() or 0
    try:
        from importlib.metadata import PackageNotFoundError, version
        pyuring_version: str | None = version("pyuring")
    except PackageNotFoundError:
        pyuring_version = None
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus_usable,
        "dir": os.path.abspath(directory),
        "fs": fs_of(directory),
        "odirect": bool(info.get("odirect", {}).get("usable")),
        "odirect_reason": info.get("odirect", {}).get("reason", ""),
        "memlock_limit": {"soft": soft, "hard": hard},
        "yrcache_version": yrcache.__version__,
        "build_info": info,
        "git_sha": git_sha(),
        "fio": fio,
        "fio_version": _run([fio, "--version"]) if fio else None,
        "pyuring_version": pyuring_version,
    }


def _quantile(ordered: list[float], q: float, method: str) -> float:
    if method == "nearest":  # nearest rank, ties to even
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
    return float(np.percentile(np.asarray(ordered, dtype=float), q))


def summarize(xs: Sequence[float], *, digits: int = 6, quantile: str = "linear",
              **keys: str) -> dict[str, Any]:
    """The summary of repeated samples ``xs`` that a report asks for, as ``key=stat`` pairs in
    output order. A stat is ``n``, ``mean``, ``median``, ``min``, ``max``, ``samples`` (the
    samples rounded to ``digits``, in run order) or ``pNN`` (the NN-th percentile: numpy's linear
    interpolation, or with ``quantile="nearest"`` the nearest rank; ``p50`` is the median).
    Without samples every statistic is None, ``n`` 0 and ``samples`` empty."""
    ordered = sorted(xs)
    out: dict[str, Any] = {}
    for key, stat in keys.items():
        if stat == "n":
            out[key] = len(xs)
        elif stat == "samples":
            out[key] = [round(x, digits) for x in xs]
        elif not xs:
            out[key] = None
        elif stat in ("median", "p50"):
            out[key] = statistics.median(ordered)
        elif stat == "mean":
            out[key] = statistics.fmean(ordered)
        elif stat == "min":
            out[key] = ordered[0]
        elif stat == "max":
            out[key] = ordered[-1]
        elif re.fullmatch(r"p\d+(\.\d+)?", stat):
            out[key] = _quantile(ordered, float(stat[1:]), quantile)
        else:
            raise ValueError(f"unknown statistic {stat!r} for {key!r}")
    return out



def throughput_summary(gbps: Sequence[float], cpu_s_per_gb: Sequence[float],
                       seconds: Sequence[float] | None = None) -> dict[str, Any] | None:
    """The bandwidth rows' summary (the io and store benchmarks' JSON): GB/s median, range and
    samples, the median seconds when given, CPU seconds per GB; None without samples."""
    if not gbps:
        return None
    return {**summarize(gbps, digits=4, gbps_median="median", gbps_min="min", gbps_max="max",
                        samples="samples"),
            **(summarize(seconds, seconds_median="median") if seconds is not None else {}),
            **summarize(cpu_s_per_gb, digits=5, cpu_s_per_gb_median="median",
                        cpu_s_per_gb_samples="samples")}

def num(x: float | None, spec: str = ".2f") -> str:
    """``x`` formatted with ``spec``, ``-`` for None: a table cell."""
    return "-" if x is None else format(x, spec)


def format_table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any] | str], *,
                 indent: str = "", rule: bool = True) -> str:
    """A text table: ``columns`` are (header, format spec such as ``">7"`` or ``"<11"``); a row
    is a sequence of cells, each formatted with its column's spec, except the last cell of a row
    shorter than the header, which is written as it is (``"not run: why"``); a row that is a
    string is written as it is. ``rule``: a line of dashes under the header."""
    def line(cells: Sequence[Any]) -> str:
        short = len(cells) < len(columns)
        parts = [format(str(cell), spec) for cell, (_, spec) in zip(cells, columns)]
        if short and cells:
            parts[-1] = str(cells[-1])
        return indent + "".join(parts)

    hdr = line([h for h, _ in columns])
    out = [hdr] + ([indent + "-" * (len(hdr) - len(indent))] if rule else [])
    out += [indent + r if isinstance(r, str) else line(r) for r in rows]
    return "\n".join(out)


@dataclass
class Bars:
    """One series of a bar panel: a value per x position (NaN: no bar), optional error bars
    (below, above) and a colour (one, or one per bar)."""
    label: str
    values: list[float]
    err: tuple[list[float], list[float]] | None = None
    color: str | list[str] | None = None


@dataclass
class Panel:
    """One bar chart: x tick labels, its series side by side, and red dashed target marks
    (x index, y, annotation or None; ``mark_label`` names them in the legend)."""
    labels: list[str]
    bars: list[Bars]
    ylabel: str
    title: str = ""
    xlabel: str = ""
    marks: list[tuple[int, float, str | None]] = field(default_factory=list)
    mark_label: str | None = None
    logy: bool = False
    legend: bool = True
    tick_rotation: int = 0
    tick_fontsize: float = 8


def plot_bars(path: str, panels: list[Panel], *, panel_width: float = 5.5,
              height: float = 4.5) -> str | None:
    """A PNG of bar ``panels`` side by side; None when written, else why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot written (pip install matplotlib)"
    if not panels:
        return "nothing to plot"
    widths = [max(panel_width, 0.75 * len(p.labels)) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), height), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        _draw_panel(ax, panel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _draw_panel(ax: Any, p: Panel) -> None:
    width = 0.8 / len(p.bars)
    for j, b in enumerate(p.bars):
        xs = [i + (j - (len(p.bars) - 1) / 2) * width for i in range(len(p.labels))]
        ax.bar(xs, b.values, width, yerr=list(b.err) if b.err else None, capsize=3,
               color=b.color, label=b.label)
    for k, (i, y, text) in enumerate(p.marks):
        ax.plot([i - 0.4, i + 0.4], [y, y], "r--", lw=1, label=p.mark_label if k == 0 else None)
        if text:
            ax.annotate(text, (i, y), fontsize=7, ha="center", va="bottom", color="red")
    ax.set_xticks(range(len(p.labels)))
    ax.set_xticklabels(p.labels, rotation=p.tick_rotation, fontsize=p.tick_fontsize,
                       ha="right" if p.tick_rotation else "center")
    ax.set(ylabel=p.ylabel, xlabel=p.xlabel)
    ax.set_title(p.title, fontsize=9)
    if p.logy:
        ax.set_yscale("log")
    if p.legend:
        ax.legend(fontsize=8)


def spread(s: dict[str, Any] | None, key: str = "gbps") -> tuple[float, float, float]:
    """(median, median - min, max - median) of a ``<key>_median/_min/_max`` summary: a bar and
    its error bar (NaN, 0, 0 for None)."""
    if s is None:
        return float("nan"), 0.0, 0.0
    med = s[f"{key}_median"]
    return med, med - s[f"{key}_min"], s[f"{key}_max"] - med


class Notes(list[str]):
    """Notes for the JSON report, echoed to stderr as they are made."""

    def __call__(self, msg: str) -> None:
        self.append(msg)
        print(f"note: {msg}", file=sys.stderr)


def usable_dir(path: str) -> str | None:
    """The absolute path of a writable benchmark directory, or None (after saying why)."""
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        print(f"error: --dir {path!r} does not exist, is not a directory or is not writable",
              file=sys.stderr)
        return None
    return os.path.abspath(path)


class Progress:
    """One status line per step on stderr (rewritten in place on a terminal), with an ETA."""

    def __init__(self, total: int) -> None:
        self.total, self.step, self.t0 = total, 0, time.monotonic()

    def __call__(self, what: str) -> None:
        self.step += 1
        el = time.monotonic() - self.t0
        eta = el / (self.step - 1) * (self.total - self.step + 1) if self.step > 1 else 0.0
        w = len(str(self.total))
        line = f"[{self.step:>{w}}/{self.total}] {what} ... eta {eta:4.0f}s"
        if sys.stderr.isatty():
            print(f"\r{line:<72}", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)
