# SPDX-License-Identifier: Apache-2.0
"""kill -9 of a writer at random points: what it published is whole, what it was writing is a miss,
and its temp files are reclaimed. Payloads are derived from the key (tests/store_util.py), so
any process can check any object byte for byte."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from yrcache.store import paths
from yrcache.store.janitor import HOST_TAG

from . import store_util


def _check_root_after_kill(root: Path, keys_of_round: set[bytes], reported: set[bytes],
                           dead_pid: int, check_all: bool, other_view: Path | None = None) -> int:
    """Checks after a writer died; returns how many of its temp files were left and reclaimed."""
    left = store_util.tmp_files(root)
    for name in left:  # only the dead writer can have left temp files (one writer per round)
        assert name.startswith(f"{HOST_TAG}-{dead_pid}-") and name.endswith(paths.TMP_SUFFIX), left
    foreign: list = []
    objs = store_util.walk(root, foreign)
    assert foreign == [], foreign
    ns_hex = store_util.namespace().hex
    visible = {bytes.fromhex(o.key_hex): o for o in objs}
    assert all(o.ns_hex == ns_hex for o in objs)
    # Nothing partial is ever visible: full size, and the bytes at the format's offsets are the
    # deterministic payload (read independently of the store's reader).
    for k, o in visible.items():
        assert o.size == store_util.object_bytes(k), (k.hex(), o.size)
    # Every put the child saw succeed is published.
    missing = reported - visible.keys()
    assert not missing, f"{len(missing)} acknowledged objects are not visible"
    # A new store on the root reclaims the dead writer's temp files (its pid is gone).
    with store_util.open_store(root) as s:
        assert s.stats()["tmp_reclaimed"] == len(left)
        assert store_util.tmp_files(root) == []
        todo = visible.keys() if check_all else (visible.keys() & keys_of_round)
        for k in todo:
            assert store_util.read_object_file(s.path_of(k), k), k.hex()
            r = s.verify(k)
            assert r.ok, (k.hex(), r.reason)
        st_ = s.stats()
        assert st_["corrupt"] == 0 and st_["misses"] == 0
    if other_view is not None:  # the same objects through the other mount
        with store_util.open_store(other_view) as s:
            for k in (visible.keys() & keys_of_round):
                r, data_ok = store_util.check_get(s, k)
                assert r.ok and data_ok, (k.hex(), r.reason)
    return len(left)


def _kill_rounds(root: Path, rounds: int, seed: int, max_delay: float,
                 other_view: Path | None = None) -> tuple[int, int]:
    rng = random.Random(seed)
    reclaimed = 0
    total_acked = 0
    for r in range(rounds):
        out = root.parent / f"{root.name}-writer-{r}.out"
        start = r * 1000
        code = store_util.writer_code(root=str(root), tag="kill", start=start, stop=start + 600,
                                      depth=4, threads=4, rewrite=True, seed=seed + r,
                                      linger=True)
        errf = root.parent / f"{root.name}-writer-{r}.err"
        with open(out, "w") as fo, open(errf, "w") as fe:
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=fo, stderr=fe,
                                    env=store_util.child_env(), cwd="/")
        try:
            line = store_util.wait_line(out, "ready", proc)
            pid = int(line.split()[1])
            assert pid == proc.pid
            time.sleep(rng.uniform(0.0, max_delay))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
        err = errf.read_text()
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)  # killed mid-run
        assert "Traceback" not in err, err
        reported = store_util.ok_keys(out.read_text())
        total_acked += len(reported)
        keys_of_round = {store_util.make_key("kill", i) for i in range(start, start + 600)}
        reclaimed += _check_root_after_kill(root, keys_of_round, reported, proc.pid,
                                            check_all=(r == rounds - 1), other_view=other_view)
    return reclaimed, total_acked


@pytest.mark.slow
def test_kill9_writer_local(data_dir):
    root = data_dir / "root"
    reclaimed, acked = _kill_rounds(root, rounds=15, seed=1234, max_delay=0.6)
    # The kills must have hit writes in flight (else nothing above tested a crash mid-write) and
    # the writer must have made progress before some of them.
    assert reclaimed > 0, "no kill left a temp file behind: the test did not exercise a crash"
    assert acked > 0


@pytest.mark.slow
def test_kill9_writer_moosefs(shared_dirs):
    dir_a, dir_b = shared_dirs
    reclaimed, acked = _kill_rounds(dir_a / "root", rounds=6, seed=99, max_delay=0.8,
                                    other_view=dir_b / "root")
    assert reclaimed > 0 and acked > 0
