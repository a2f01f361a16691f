# SPDX-License-Identifier: Apache-2.0
"""The object store path (:class:`yrcache.store.Store`) against fio on the same file system.

Five measurements, in one run, in one temporary directory under ``--dir`` (removed at the end):

* **store**: publish N objects (default 32 × 32 MiB: one 256-token chunk of an 8B-class model,
  32 layers × 1 MiB segments) through ``Store.put`` (checksums, header, O_DIRECT writes, fsync,
  rename), all puts submitted at once so the store pool keeps several in flight. Baseline: fio
  writing N new files of the same size with ``--create_on_open=1 --fsync_on_close=1``.
* **load**: read them back whole (``get(key, bufs, lengths=...)``: header and 32 segments in one
  batch, every checksum verified) and **load_layer**: per layer, ``get(key, [buf], layers=[i],
  lengths=...)`` for every object (the vLLM connector's layer-wise pattern). Baseline: fio reading
  its own files, sequentially file after file (``load``) and round-robin over the files one
  segment at a time (``load_layer``: the same layer-major order).
* **verify**: the XXH3 checksums of the loaded bytes alone, one thread, as a fraction of the
  load time (what verification costs).
* **lookup**: ``Store.lookup`` of a 512-chunk chain (small objects: only existence matters):
  warm (in-process index), cold from fresh processes on the same directory, and with
  ``--mount-b`` cold from fresh processes on the other mount of a shared file system.
* **metaops**: the metadata system calls per put, get and lookup (512-chunk chain), counted
  with ``strace -f`` in a fresh process (skipped, and said so, without strace; ``--no-metaops``
  skips it): what a shared file system's metadata server must answer per operation.

Our runs and fio's alternate in pairs (pair *i*: ours first when *i* is even), medians of
``--pairs`` pairs. The page cache is dropped before every read run when possible (root). See
docs/bench_schema.md ("Object store benchmark").

    python -m yrcache.bench.store_bench --json store.json --plot store.png      # in ./
    python -m yrcache.bench.store_bench --dir /tmp/yrcache-mfs/mnt_a \\
        --mount-b /tmp/yrcache-mfs/mnt_b
    python -m yrcache.bench.store_bench --quick
"""
from .driver import main

__all__ = ["main"]
