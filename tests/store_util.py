# SPDX-License-Identifier: Apache-2.0
"""Helpers for the store safety tests: a namespace, deterministic keys and payloads (any process
can rebuild any object's bytes from its key alone and compare byte for byte), and scans of a root.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from yrcache.io.engine import HostBuffer
from yrcache.store import paths
from yrcache.store.format import segment_offsets
from yrcache.store.keys import Namespace
from yrcache.store.store import Store

REPO = Path(__file__).resolve().parent.parent

DTYPE = "bfloat16"
# Segment lengths the geometry picks from: unaligned, exactly aligned (O_DIRECT path when the
# buffer is aligned too), tiny, and a few pages.
SEG_LENGTHS = (1, 777, 4096, 5000, 8192, 12345, 20000, 65536)


def namespace(tag: str = "safety", num_layers: int = 4) -> Namespace:
    return Namespace(model=f"yrcache-test/{tag}", dtype=DTYPE, num_layers=num_layers, kv_heads=2,
                     head_size=64, layout="test-dense", chunk_tokens=16)


def make_key(*parts: object) -> bytes:
    """A 16-byte key derived from ``parts`` (stable across processes)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=16, person=b"yrc-test").digest()


def parent_of(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16, person=b"yrc-parent").digest()


def geometry(key: bytes, max_layers: int = 4) -> list[int]:
    """Segment lengths of the object stored under ``key``: 1..max_layers segments, each of a length
    picked from SEG_LENGTHS, all derived from the key."""
    n = 1 + key[0] % max_layers
    return [SEG_LENGTHS[key[1 + i] % len(SEG_LENGTHS)] for i in range(n)]


def object_bytes(key: bytes, max_layers: int = 4) -> int:
    return segment_offsets(geometry(key, max_layers))[2]


def payload(key: bytes, layer: int, nbytes: int) -> np.ndarray:
    """Deterministic pseudo-random bytes of one segment, seeded from the key and the layer."""
    seed = int.from_bytes(hashlib.blake2b(key + layer.to_bytes(4, "little"),
                                          digest_size=16).digest(), "little")
    return np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)


def segments(key: bytes, max_layers: int = 4, *, aligned: bool | None = None) -> list:
    """The segment buffers of ``key``'s object. Aligned (HostBuffer) buffers are used for lengths
    that are 4 KiB multiples when ``aligned`` is True (or, when None, on even key bytes), so both
    the O_DIRECT and the buffered write paths are taken."""
    if aligned is None:
        aligned = key[15] % 2 == 0
    out = []
    for i, n in enumerate(geometry(key, max_layers)):
        p = payload(key, i, n)
        if aligned and n % 4096 == 0:
            hb = HostBuffer(n)
            np.frombuffer(hb, dtype=np.uint8)[:] = p
            out.append(hb)
        else:
            out.append(p)
    return out


def put_kwargs(key: bytes) -> dict:
    return {"parent": parent_of(key), "chunk_index": 1 + key[2] % 7, "token_count": 16,
            "dtype": DTYPE, "shape": (2, 16, 64)}


def put(store, key: bytes, *, max_layers: int = 4, dedup: bool = True,
        aligned: bool | None = None):
    """Submit the put of ``key``'s deterministic object; returns the Future (bool)."""
    return store.put(key, segments(key, max_layers, aligned=aligned), dedup=dedup,
                     **put_kwargs(key))


def check_get(store, key: bytes, *, max_layers: int = 4, use_lengths: bool = False):
    """Get ``key``: (GetResult, data_ok). data_ok is True when the result is a hit and every segment
    equals the deterministic payload byte for byte (None on a miss)."""
    lens = geometry(key, max_layers)
    bufs = [np.full(n, 0xA5, dtype=np.uint8) for n in lens]
    r = store.get(key, bufs, lengths=lens if use_lengths else None).result(timeout=60)
    if not r.ok:
        return r, None
    ok = all(np.array_equal(b, payload(key, i, n)) for i, (b, n) in enumerate(zip(bufs, lens)))
    ok = ok and r.header is not None and r.header.key == key and r.header.parent == parent_of(key)
    return r, ok


def read_object_file(path: str | os.PathLike, key: bytes, max_layers: int = 4) -> bool:
    """Byte-compare an object file's segments (at the offsets the format puts them) with the
    deterministic payload, independently of the store's reader."""
    lens = geometry(key, max_layers)
    _, offs, total = segment_offsets(lens)
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) != total or raw[:8] != b"YRCKVOBJ":
        return False
    return all(raw[o:o + n] == payload(key, i, n).tobytes()
               for i, (o, n) in enumerate(zip(offs, lens)))


def walk(root: str | os.PathLike, foreign: list | None = None) -> list[paths.ObjectEntry]:
    fd = os.open(os.fspath(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return list(paths.walk_objects(fd, foreign=foreign))
    finally:
        os.close(fd)


def tmp_files(root: str | os.PathLike) -> list[str]:
    d = Path(root) / paths.TMP_DIR
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir())


# A writer child: stores keys make_key(tag, i) for i in range(start, stop) (or forever when stop is
# None) with up to `depth` puts in flight, printing "ok <i>" once a put's result is True.
WRITER_CODE = r"""
import sys, os, json
sys.path.insert(0, {tests!r})
import store_util
from yrcache.store.store import Store
cfg = json.loads({cfg!r})
store = Store(cfg["root"], store_util.namespace(), janitor_period=0,
              store_threads=cfg.get("threads", 4))
print("ready", os.getpid(), flush=True)
if cfg.get("wait_go"):
    sys.stdin.readline()
i = cfg["start"]
depth = cfg.get("depth", 4)
inflight = []
import random
rng = random.Random(cfg.get("seed", 0))
while cfg["stop"] is None or i < cfg["stop"] or inflight:
    while len(inflight) < depth and (cfg["stop"] is None or i < cfg["stop"]):
        k = store_util.make_key(cfg["tag"], i)
        dedup = cfg.get("dedup", True)
        # now and then overwrite an earlier object (rename over a published file)
        if cfg.get("rewrite") and i > cfg["start"] + 4 and rng.random() < 0.2:
            k = store_util.make_key(cfg["tag"], rng.randrange(cfg["start"], i))
            dedup = False
        inflight.append((i, k, store_util.put(store, k, dedup=dedup)))
        i += 1
    j, k, fut = inflight.pop(0)
    r = fut.result()
    print(("ok " if r else "fail ") + k.hex(), flush=True)
if cfg.get("linger"):  # a writer that is to be killed must still be running when the kill comes
    import time
    time.sleep(3600)
store.close()
print("done", json.dumps(store.stats()), flush=True)
"""


def writer_code(**cfg) -> str:
    import json
    return WRITER_CODE.format(tests=str(Path(__file__).resolve().parent), cfg=json.dumps(cfg))


# -- shared by the store safety tests (kill9, damage, foreign, faults, enospc, moosefs) ------
#: the reasons a damaged or foreign object may give (GetResult.reason prefixes)
OK_MISS = ("corrupt", "missing")


def child_env() -> dict[str, str]:
    """The environment of a child process that imports yrcache from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def open_store(root, **kw) -> Store:
    """A Store of namespace() without a janitor thread or open-object cache."""
    kw.setdefault("janitor_period", 0)
    # These tests damage objects in place, which never happens to a published object (objects
    # are replaced by rename). A store holding an object open re-reads its segments (and checks
    # them) but not its header until handle_ttl passes: without open handles every read here
    # starts from the file. test_store.py covers reads through open handles.
    kw.setdefault("handle_ttl", 0)
    return Store(root, namespace(), **kw)


def wait_line(path: Path, prefix: str, proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """The first complete line starting with ``prefix`` that a child writes to ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().split("\n")[:-1]:  # complete lines only
                if line.startswith(prefix):
                    return line
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    raise AssertionError(f"child never printed {prefix!r}: rc={proc.poll()} "
                         f"out={path.read_text() if path.exists() else ''!r}")


def ok_keys(out_text: str) -> set[bytes]:
    """Keys a writer child reported published (its "ok <hex>" lines)."""
    # Only complete lines: the kill may land in the middle of a print.
    lines = out_text.split("\n")[:-1]
    return {bytes.fromhex(ln[3:]) for ln in lines if ln.startswith("ok ") and len(ln) == 35}
