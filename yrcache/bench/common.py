# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the benchmarks: sizes, a description of the machine, a table and a plot."""
from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from typing import Any

from ..envs import parse_size  # noqa: F401 - it lives in yrcache.envs now (the CLI uses it)


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


def format_table(results: list[dict[str, Any]], footnote: str = "") -> str:
    """One line per result: medians, min-max, ratio and CPU s/GB of the measured side and fio."""
    def f(x: float | None, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    hdr = (f"{'op':<6}{'bs':>7}{'qd':>4}  {'backend/tool':<15}{'GB/s':>7}{'min-max':>12}"
           f"{'fio GB/s':>10}{'min-max':>12}{'ratio':>7}{'CPU s/GB':>10}{'fio':>8}")
    lines = [hdr, "-" * len(hdr)]
    for r in results:
        e, fi = r["engine"], r["fio"]
        head = f"{r['op']:<6}{fmt_size(r['block_bytes']):>7}{r['queue_depth']:>4}  {r['backend']:<15}"
        if e is None:
            lines.append(head + f"not comparable: {r['note']}")
            continue
        star = "*" if fi is not None and "reference" in fi else " "
        lines.append(
            head + f"{f(e['gbps_median']):>7}{f(e['gbps_min']) + '-' + f(e['gbps_max']):>12}"
            + (f"{f(fi['gbps_median']) + star:>10}{f(fi['gbps_min']) + '-' + f(fi['gbps_max']):>12}"
               if fi else f"{'-':>10}{'-':>12}")
            + f"{f(r['ratio']):>7}{f(e['cpu_s_per_gb_median'], '.3f'):>10}"
            + f"{f(fi['cpu_s_per_gb_median'] if fi else None, '.3f'):>8}")
    if footnote and any(r["fio"] and "reference" in r["fio"] for r in results):
        lines.append(footnote)
    return "\n".join(lines)


def plot_bars(results: list[dict[str, Any]], path: str) -> str | None:
    """PNG bar chart of GB/s, measured side vs fio, min-max error bars; a reason if not drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot written (pip install matplotlib)"
    rows = [r for r in results if r["engine"] is not None]
    labels = [f"{r['op']} {fmt_size(r['block_bytes'])}\nqd{r['queue_depth']} {r['backend']}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(rows)), 4.8))
    for k, (who, color) in enumerate((("engine", "tab:blue"), ("fio", "tab:gray"))):
        med, lo, hi = [], [], []
        for r in rows:
            s = r[who]
            med.append(s["gbps_median"] if s else float("nan"))
            lo.append(s["gbps_median"] - s["gbps_min"] if s else 0.0)
            hi.append(s["gbps_max"] - s["gbps_median"] if s else 0.0)
        colors = [color if not (r[who] and "reference" in r[who]) else "lightgray" for r in rows]
        ax.bar([i + (k - 0.5) * 0.4 for i in range(len(rows))], med, 0.4, yerr=[lo, hi],
               capsize=2, color=colors, label="yrcache / baseline" if k == 0 else "fio")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("GB/s (median, min-max)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


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
