# SPDX-License-Identifier: Apache-2.0
"""The ``yrcache`` command (``python -m yrcache``): inspect, check and maintain a cache root.

    yrcache info [DIR]                 build, io_uring, and O_DIRECT / file system type of DIR
    yrcache ls ROOT [--ns HEX] [--long] namespaces, or the objects of one namespace
    yrcache du ROOT                    bytes per namespace, the usage ledger, temp files
    yrcache gc ROOT [--capacity 10G]   one janitor pass now
    yrcache fsck ROOT [--repair]       verify every object; find foreign files, orphans, temp files
    yrcache bench [io|store] [ARGS]    the benchmarks (io: yrcache.bench.io_bench)

Every command prints text for people, or one JSON document with ``--json`` (:mod:`.output`).
Exit status: 0 ok, 1 fsck found problems (left unrepaired), 2 bad usage or an unusable ROOT.

The tools work on descriptors like the store itself (:mod:`yrcache.store.paths`): nothing below
ROOT is reached through a symlink, and removals happen relative to directory descriptors.
Read-only commands (:mod:`.inspect`: info, ls, du; fsck without --repair) never change the root.
Arguments and dispatch: :mod:`.parser`; gc and fsck: :mod:`.maintain`.
"""
from .parser import build_parser, main

__all__ = ["build_parser", "main"]
