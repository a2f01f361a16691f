# SPDX-License-Identifier: Apache-2.0
"""The ``yrcache`` command line: arguments, and dispatch to the commands (:mod:`.inspect`,
:mod:`.maintain`, and ``bench``, which runs a benchmark module)."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .. import envs
from . import inspect, maintain, output

MAX_JOBS = 256


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``1.5GiB``, ``4096`` -> bytes (binary units), at most 8 EiB."""
    try:
        n = envs.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return n


def _bounded(conv: Callable[[str], Any], lo: float, hi: float, what: str, *,
             lo_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``conv(text)`` within [lo, hi] (or (lo, hi]); nan and inf are refused
    (a nan would compare False everywhere: never stale, never evicted)."""
    def parse(text: str) -> Any:
        try:
            v = conv(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not ((lo < v if lo_open else lo <= v) and v <= hi):   # nan fails every comparison
            raise argparse.ArgumentTypeError(
                f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {text}")
        return v
    return parse


_fraction = _bounded(float, 0, 1, "a number", lo_open=True)


_seconds = _bounded(float, 0, 1e9, "a number of seconds")


_jobs = _bounded(int, 1, MAX_JOBS, "an integer")


_BENCHES = {"io": "yrcache.bench.io_bench", "store": "yrcache.bench.store_bench"}


_BENCH_HELP = """usage: yrcache bench [io|store] [ARGS...]

Runs a benchmark from inside the package; ARGS go to it unchanged (see `yrcache bench io --help`).
  io      the I/O bandwidth benchmark, engine vs fio (yrcache.bench.io_bench; the default)
  store   the object store benchmark (yrcache.bench.store_bench, when installed)
"""


def cmd_bench(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(_BENCH_HELP)
        avail = [k for k, m in _BENCHES.items() if importlib.util.find_spec(m) is not None]
        print(f"available here: {', '.join(avail)}\n\n-- yrcache bench io --help --")
        sys.stdout.flush()
        argv = ["io", "--help"]
    which = "io"
    if argv and argv[0] in _BENCHES:
        which, argv = argv[0], argv[1:]
    mod_name = _BENCHES[which]
    if importlib.util.find_spec(mod_name) is None:
        raise output.UsageError(f"bench {which}: {mod_name} is not part of this installation")
    mod = importlib.import_module(mod_name)
    rc = mod.main(list(argv))
    return int(rc or 0)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document instead of text")
    p = argparse.ArgumentParser(
        prog=output.PROG, description="Inspect, check and maintain yrcache cache roots.",
        epilog="Exit status: 0 ok, 1 fsck found problems, 2 bad usage or unusable ROOT.")
    p.add_argument("--json", action="store_true", default=False,
                   help="print one JSON document instead of text")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    s = sub.add_parser("info", parents=[common], help="build, io_uring, O_DIRECT and fs of DIR",
                       description="Version, build (backends, liburing, CUDA, checksum), io_uring "
                       "usability; with DIR: O_DIRECT usability and the file system type.")
    s.add_argument("dir", nargs="?", metavar="DIR")
    s.set_defaults(fn=inspect.cmd_info)

    s = sub.add_parser("ls", parents=[common], help="namespaces, or the objects of one",
                       description="Namespaces (model, dtype, layers, objects, bytes); with --ns "
                       "the objects of one namespace.")
    s.add_argument("root", metavar="ROOT")
    s.add_argument("--ns", metavar="HEX", help="list this namespace's objects (a unique prefix "
                   "is enough)")
    s.add_argument("--long", "-l", action="store_true",
                   help="with --ns: header fields (chunk index, tokens, parent, segments)")
    s.set_defaults(fn=inspect.cmd_ls)

    s = sub.add_parser("du", parents=[common], help="bytes per namespace, ledger, temp files",
                       description="Bytes and objects per namespace and in total (file sizes, "
                       "as the janitor counts them), the usage ledger and the temp files.")
    s.add_argument("root", metavar="ROOT")
    s.set_defaults(fn=inspect.cmd_du)

    _add_gc(sub, common)
    _add_fsck(sub, common)

    sub.add_parser("bench", add_help=False, help="run a benchmark: bench [io|store] [ARGS...]")
    return p


def _add_gc(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("gc", parents=[common], help="one janitor pass now",
                       description="One janitor pass now: reclaim abandoned temp files, evict "
                       "least recently used objects down to the low watermark once usage passes "
                       "the high one, remove orphans. Waits for a pass running elsewhere.")
    s.add_argument("root", metavar="ROOT")
    s.add_argument("--capacity", type=lambda t: 0 if t.lower() == "none" else parse_size(t),
                   metavar="BYTES", help="byte budget of the root (10G, 512M; 'none': no "
                   "eviction); default: the capacity recorded in the ledger, if any")
    s.add_argument("--low", type=_fraction, default=0.85, help="low watermark (default 0.85)")
    s.add_argument("--high", type=_fraction, default=0.95, help="high watermark (default 0.95)")
    s.add_argument("--tmp-max-age", type=_seconds, default=600.0, metavar="S",
                   help="temp files older than this are abandoned (default 600)")
    s.add_argument("--orphan-grace", type=_seconds, default=60.0, metavar="S",
                   help="objects without a parent are kept this long (default 60)")
    s.set_defaults(fn=maintain.cmd_gc)


def _add_fsck(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("fsck", parents=[common], help="verify every object",
                       description="Verify every object (header, size, every segment's checksum; "
                       "MACs with --mac-key-file) and find foreign entries, orphans and stale temp "
                       "files. Exit status 1 when problems are left.")
    s.add_argument("root", metavar="ROOT")
    s.add_argument("--repair", action="store_true",
                   help="remove invalid objects, orphans, stale temp files and foreign files and "
                   "symlinks (foreign directories are only reported)")
    s.add_argument("--mac-key-file", metavar="F",
                   help="the namespace MAC key (16-64 raw bytes, or hex text): objects without a "
                   "valid tag are invalid")
    s.add_argument("--ns", metavar="HEX", help="check only this namespace")
    s.add_argument("--tmp-max-age", type=_seconds, default=600.0, metavar="S",
                   help="temp files older than this are stale (default 600)")
    s.add_argument("--orphan-grace", type=_seconds, default=60.0, metavar="S",
                   help="orphans younger than this may be out-of-order publishes: noted, not "
                   "problems (default 60)")
    s.add_argument("-j", "--jobs", type=_jobs, default=4,
                   help=f"objects checked in parallel (1-{MAX_JOBS}, default 4)")
    s.set_defaults(fn=maintain.cmd_fsck)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (never raises SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        i = 0
        while i < len(argv) and argv[i] == "--json":
            i += 1
        if i < len(argv) and argv[i] == "bench":
            return cmd_bench(argv[i + 1:])
        args = build_parser().parse_args(argv)
        return int(args.fn(args))
    except output.UsageError as e:
        output.note(f"error: {e}")
        return 2
    except SystemExit as e:  # argparse (usage errors, --help), or a benchmark's own exit
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BrokenPipeError:  # `yrcache ls ROOT | head`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        output.note(f"error: {e}")
        return 2


__all__ = ["MAX_JOBS", "build_parser", "cmd_bench", "main", "parse_size"]
