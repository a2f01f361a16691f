# SPDX-License-Identifier: Apache-2.0
"""Runs the phases, each in its own document, and prints each phase's table."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from .copy import phase_copy, table_copy
from .file import phase_file, table_file
from .harness import PHASES, Ctx, Terminated, env_info, on_sigterm
from .overlap import phase_overlap, table_overlap
from .serve import phase_serve, table_serve

DESCRIPTION = """\
The GPU data path on a real card: copy engine, file path, overlap with compute, TTFT.

Phases (``all`` runs them in this order; each writes ``OUT/<phase>.json`` as soon as it ends, and
rewrites it with ``"partial": true`` after each step, so a later timeout still leaves results):

* **copy**: gather (D2H) and scatter (H2D) of N random distinct pages (64 MiB per op) of a paged
  layer tensor of 2N pages, for 16/32/64/128 KiB pages and each copy method (staged, mapped, dma),
  into/from a pinned HostBuffer. Baseline: ONE ``_C.cuda.memcpy`` of the same bytes between the
  same pinned buffer and a contiguous device buffer. Bit-exactness checked once per config.
* **file**: a paged Cache (32 layers, 64 KiB pages, 256-token chunks: 32 MiB objects) storing and
  loading ~1 GiB in sync mode from CUDA tensors vs from CPU tensors (the host O_DIRECT path, same
  Cache, same disk, interleaved), beside a re-measured D2H/H2D copy peak; then
  ``yrcache.cuda.gds.DeviceFileIO`` round trips (256 MiB) through each backend it can construct.
* **overlap**: a bf16 8192^3 matmul loop on the default stream alone vs with a background thread
  sustaining ``Copier.gather_paged`` offload (two ops in flight) of another tensor, per method.
* **serve**: TTFT of a random-weight Llama-3-8B shape (transformers, bf16, on the GPU) at 8K and
  32K prompt tokens: recompute (full prefill) vs sync load vs async (layer-wise) load of the whole
  prefix except the last chunk through a dense-layout Cache, then the last chunk's prefill.

Timings: time.perf_counter around synchronized work (CUDA events for the matmul loop), warm-up
first, medians of interleaved repetitions (A, B, A, B ...; the order rotates each repetition),
ratios computed from the same run.

    python -m yrcache.bench.gpu_bench all --out gpu_out
    python -m yrcache.bench.gpu_bench copy --quick
"""


RUNNERS: dict[str, tuple[Callable[[Ctx], None], Callable[[dict[str, Any]], str]]] = {
    "copy": (phase_copy, table_copy), "file": (phase_file, table_file),
    "overlap": (phase_overlap, table_overlap), "serve": (phase_serve, table_serve)}


def run_phase(a: argparse.Namespace, phase: str, env: dict[str, Any]) -> bool:
    fn, table = RUNNERS[phase]
    c = Ctx(a, phase, env)
    print(f"== {phase} ({c.left():.0f} s left of --budget)", file=sys.stderr, flush=True)
    c.save()
    terminated: Terminated | None = None
    try:
        fn(c)
        c.doc["ok"] = True
    except Terminated as e:
        terminated = e
        c.doc["ok"], c.doc["error"] = False, str(e)
    except Exception as e:  # noqa: BLE001 - recorded; `all` goes on with the next phase
        c.doc["ok"], c.doc["error"] = False, f"{type(e).__name__}: {e}"
        c.doc["traceback"] = traceback.format_exc()
        print(c.doc["traceback"], file=sys.stderr, flush=True)
    c.doc["partial"] = False
    c.save()
    print(f"\n== {phase}: {'ok' if c.doc['ok'] else 'FAILED: ' + str(c.doc['error'])} "
          f"({c.doc['elapsed_s']:.1f} s) -> {c.path}")
    try:
        t = table(c.doc)
        if t:
            print(t)
    except Exception as e:  # noqa: BLE001
        print(f"(table failed: {type(e).__name__}: {e})")
    for n in c.doc["notes"]:
        print(f"note: {n}")
    sys.stdout.flush()
    with contextlib.suppress(Exception):   # free the phase's device memory for the next one
        import gc
        gc.collect()
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if terminated is not None:
        raise terminated
    return bool(c.doc["ok"])


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yrcache.bench.gpu_bench", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=[*PHASES, "all"], help="what to measure")
    p.add_argument("--out", default="gpu_out",
                   help="directory for <phase>.json (created; default ./gpu_out)")
    p.add_argument("--dir", default="/tmp",
                   help="local file system for the file and serve phases' cache roots (a temp "
                        "dir is made and removed under it; default /tmp)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes: 16 MiB copies, 256 MiB file ops, 0.5 s matmul runs, 8K "
                        "prompts only")
    p.add_argument("--budget", type=float, default=150.0,
                   help="seconds for the whole run: the file phase shrinks and the serve phase "
                        "skips longer prompts to stay inside it (default 150)")
    p.add_argument("--serve-tokens", type=_ints, default=None,
                   help="prompt lengths, comma separated (default 8192,32768; --quick 8192)")
    p.add_argument("--serve-layers", type=int, default=32,
                   help="decoder layers of the served model (default 32: Llama-3-8B)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    a.deadline = time.monotonic() + a.budget
    os.makedirs(a.out, exist_ok=True)
    a.out = os.path.abspath(a.out)
    if not os.path.isdir(a.dir) or not os.access(a.dir, os.W_OK | os.X_OK):
        print(f"error: --dir {a.dir!r} is not a writable directory", file=sys.stderr)
        return 2
    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:   # not the main thread
        pass
    env = env_info(a.device, a.dir)
    print(f"card: {env.get('card')}  torch {env.get('torch')} (CUDA {env.get('torch_cuda')})  "
          f"python {env['python']}", flush=True)
    phases = list(PHASES) if a.phase == "all" else [a.phase]
    ok = True
    t0 = time.monotonic()
    try:
        for ph in phases:
            ok = run_phase(a, ph, env) and ok
    except Terminated as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 124
    print(f"\n{len(phases)} phase(s) in {time.monotonic() - t0:.1f} s: "
          f"{'all ok' if ok else 'some FAILED'}")
    return 0 if ok else 1

