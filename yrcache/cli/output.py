# SPDX-License-Identifier: Apache-2.0
"""How the ``yrcache`` command prints: text for people (sizes, ages, tables) or one JSON document
with ``--json``; messages and usage errors on stderr."""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

PROG = "yrcache"


class UsageError(Exception):
    """A problem with the command line or ROOT: message on stderr, exit status 2."""


def human(n: float | None) -> str:
    """Bytes for people: ``1536`` -> ``1.5 KiB``."""
    if n is None:
        return "-"
    n = float(n)
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def when(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def age(seconds: float) -> str:
    s = max(0.0, seconds)
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.1f} {unit}"
    return f"{s:.0f} s"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
           right: frozenset[int] | set[int] = frozenset()) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def emit(args: argparse.Namespace, doc: dict[str, Any], text: Callable[[dict[str, Any]], str]
          ) -> None:
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=False, default=str))
    else:
        out = text(doc)
        if out:
            print(out)


def note(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


__all__ = ["PROG", "UsageError", "age", "emit", "human", "note", "plural", "table", "when"]
