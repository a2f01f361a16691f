# SPDX-License-Identifier: Apache-2.0
"""The `yrcache` command line on a real cache root: ls/du/gc/fsck/info/bench, in-process
(cli.main) and as `python -m yrcache` in a child process."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import yrcache
from yrcache import cli
from yrcache.cli.output import human
from yrcache.cli.parser import parse_size
from yrcache.store.format import segment_offsets
from yrcache.store.keys import Namespace, chain_keys
from yrcache.store.store import Store

from .helpers import REPO

NS = Namespace(model="m", dtype="bfloat16", num_layers=4, kv_heads=2, head_size=64, layout="test")
SEG = 64 << 10
OBJ_BYTES = segment_offsets([SEG] * 4)[2]
CHAINS, CHUNKS = 3, 3


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "yrcache", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd="/", check=False)


def cli_json(capsys: pytest.CaptureFixture[str], *args: str, rc: int = 0) -> dict:
    capsys.readouterr()
    got = cli.main([*args, "--json"])
    out = capsys.readouterr().out
    assert got == rc, out
    return json.loads(out)


def make_root(root: Path, *, mac_key: bytes | None = None, chains: int = CHAINS,
              chunks: int = CHUNKS) -> tuple[list[list[bytes]], dict[bytes, list[bytes]]]:
    """`chains` chains of `chunks` objects (4 segments of 64 KiB each); returns keys and data."""
    data: dict[bytes, list[bytes]] = {}
    chain_list = []
    with Store(root, NS, janitor_period=0, mac_key=mac_key) as st:
        for c in range(chains):
            keys = chain_keys(NS.digest, list(range(c * 10_000, c * 10_000 + 256 * chunks)), 256)
            prev = NS.digest
            for i, k in enumerate(keys):
                segs = [os.urandom(SEG) for _ in range(4)]
                assert st.put(k, segs, parent=prev, chunk_index=i, token_count=256,
                              dtype="bfloat16", shape=[256, 2, 64]).result()
                data[k] = segs
                prev = k
            chain_list.append(keys)
    return chain_list, data


def obj_path(root: Path, key: bytes) -> Path:
    h = key.hex()
    return root / NS.hex / h[:2] / h[2:4] / f"{h}.kv"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_ls_du_match_what_was_stored(root, capsys):
    chains, data = make_root(root)
    n = CHAINS * CHUNKS
    assert sum(obj_path(root, k).stat().st_size for k in data) == n * OBJ_BYTES

    p = run_cli("ls", str(root), "--json")  # the real entry point, in a child
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["objects"] == n and doc["bytes"] == n * OBJ_BYTES
    (ns,) = doc["namespaces"]
    assert ns["ns"] == NS.hex and ns["objects"] == n and ns["bytes"] == n * OBJ_BYTES
    assert (ns["model"], ns["dtype"], ns["num_layers"]) == ("m", "bfloat16", 4)
    assert ns["namespace_json"] == "ok"

    doc = cli_json(capsys, "ls", str(root), "--ns", NS.hex[:8], "--long")  # a prefix is enough
    assert doc["ns"] == NS.hex and doc["count"] == n
    by_key = {o["key"]: o for o in doc["objects"]}
    assert set(by_key) == {k.hex() for k in data}
    for keys in chains:
        prev = NS.digest
        for i, k in enumerate(keys):
            h = by_key[k.hex()]["header"]
            assert by_key[k.hex()]["bytes"] == OBJ_BYTES
            assert (h["chunk_index"], h["tokens"], h["parent"], h["segments"]) == \
                (i, 256, prev.hex(), 4)
            prev = k

    doc = cli_json(capsys, "du", str(root))
    assert doc["total"] == {"objects": n, "bytes": n * OBJ_BYTES}
    assert doc["namespaces"][0]["bytes"] == n * OBJ_BYTES
    assert doc["ledger"]["bytes"] == n * OBJ_BYTES  # Store.close flushed its additions
    assert doc["tmp"] == {"files": 0, "bytes": 0} and doc["foreign"] == 0

    assert cli.main(["ls", str(root)]) == 0  # text mode: humanised sizes
    out = capsys.readouterr().out
    assert "2.3 MiB" in out and NS.hex in out
    assert cli.main(["du", str(root)]) == 0
    assert "ledger: 2.3 MiB" in capsys.readouterr().out


def test_fsck_finds_each_problem_and_repairs(root, capsys, tmp_path):
    chains, data = make_root(root)
    assert cli.main(["fsck", str(root)]) == 0
    assert "clean" in capsys.readouterr().out

    flipped, truncated = chains[0][-1], chains[1][-1]
    with open(obj_path(root, flipped), "r+b") as fh:  # one byte inside segment 2
        off = segment_offsets([SEG] * 4)[1][2] + 1234
        fh.seek(off)
        b = fh.read(1)
        fh.seek(off)
        fh.write(bytes([b[0] ^ 0x40]))
    os.truncate(obj_path(root, truncated), OBJ_BYTES - 4096)
    shard = obj_path(root, chains[0][0]).parent
    (shard / "notes.txt").write_text("not ours")
    (root / "README").write_text("not ours either")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (shard / ("f" * 32 + ".kv")).symlink_to(outside)
    old_tmp = root / ".tmp" / "deadbeef-1-0-abcd.tmp"
    old_tmp.write_bytes(b"x" * 5000)
    os.utime(old_tmp, (time.time() - 3600, time.time() - 3600))
    young_tmp = root / ".tmp" / "deadbeef-2-0-abcd.tmp"  # a writer at work: not a problem
    young_tmp.write_bytes(b"y")
    with Store(root, NS, janitor_period=0, tmp_max_age=1e9) as st:  # chain 2 loses its head
        assert st.delete(chains[2][0])

    p = run_cli("fsck", str(root), "--orphan-grace", "0")
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout
    for needle in (flipped.hex(), "segment 2 checksum mismatch", truncated.hex(),
                   f"{OBJ_BYTES - 4096} bytes, header says {OBJ_BYTES}", "notes.txt", "README",
                   "f" * 32 + ".kv (symlink)", old_tmp.name, chains[2][1].hex(),
                   chains[2][2].hex()):
        assert needle in out, f"{needle!r} not in:\n{out}"
    assert young_tmp.name not in out and "Traceback" not in p.stderr

    doc = cli_json(capsys, "fsck", str(root), "--orphan-grace", "0", rc=1)
    assert {c["key"] for c in doc["corrupt"]} == {flipped.hex(), truncated.hex()}
    assert {o["key"] for o in doc["orphans"]} == {chains[2][1].hex(), chains[2][2].hex()}
    assert {(f["path"].rsplit("/", 1)[-1], f["kind"]) for f in doc["foreign"]} == \
        {("notes.txt", "file"), ("README", "file"), ("f" * 32 + ".kv", "symlink")}
    assert [t["name"] for t in doc["stale_temp"]] == [old_tmp.name]
    assert doc["checked"] == len(data) - 1 and doc["unrepaired"] == doc["problems"] == 8
    assert obj_path(root, flipped).exists()  # without --repair nothing changes

    doc = cli_json(capsys, "fsck", str(root), "--repair", "--orphan-grace", "0")
    assert doc["clean"] and doc["problems"] == 8
    assert all(p["repaired"] for k in ("corrupt", "orphans", "foreign", "stale_temp")
               for p in doc[k])
    assert cli.main(["fsck", str(root)]) == 0
    assert outside.read_text() == "keep me"  # the symlink went, never its target
    assert young_tmp.exists() and not old_tmp.exists()
    assert not (root / "README").exists() and not (shard / "notes.txt").exists()

    good = [k for k in chains[0][:-1] + chains[1][:-1]]
    with Store(root, NS, janitor_period=0, tmp_max_age=1e9) as st:
        for k in good:
            bufs = [bytearray(SEG) for _ in range(4)]
            res = st.get(k, bufs).result()
            assert res.ok, res.reason
            assert [bytes(b) for b in bufs] == data[k]
        for k in (flipped, truncated, *chains[2]):
            assert not st.get(k, [bytearray(SEG) for _ in range(4)]).result()


def test_fsck_reports_foreign_dirs_young_orphans_and_macs(root, capsys, tmp_path):
    key = os.urandom(32)
    chains, _ = make_root(root, mac_key=key, chains=1, chunks=2)
    keyfile = tmp_path / "mac.key"
    keyfile.write_text(key.hex() + "\n")
    assert cli.main(["fsck", str(root), "--mac-key-file", str(keyfile)]) == 2  # needs --ns
    assert cli.main(["fsck", str(root), "--ns", NS.hex, "--mac-key-file", str(keyfile)]) == 0
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    doc = cli_json(capsys, "fsck", str(root), "--ns", NS.hex, "--mac-key-file", str(wrong), rc=1)
    assert len(doc["corrupt"]) == 2 and "MAC mismatch" in doc["corrupt"][0]["reason"]

    (root / NS.hex / "junk").mkdir()
    (root / NS.hex / "junk" / "x").write_text("x")
    with Store(root, NS, janitor_period=0) as st:
        st.delete(chains[0][0])
    doc = cli_json(capsys, "fsck", str(root), "--repair", rc=1)  # default grace: young orphan
    assert [o["key"] for o in doc["young_orphans"]] == [chains[0][1].hex()]
    assert doc["orphans"] == [] and doc["unrepaired"] == 1
    (f,) = doc["foreign"]
    assert f["path"] == f"{NS.hex}/junk" and f["kind"] == "dir" and not f["repaired"]
    assert (root / NS.hex / "junk" / "x").exists()


def test_gc_evicts_to_low_watermark(root, capsys):
    make_root(root)
    total = CHAINS * CHUNKS * OBJ_BYTES
    cap = 1536 << 10  # well below the 2.3 MiB stored
    assert total > 0.95 * cap
    doc = cli_json(capsys, "gc", str(root), "--capacity", "1536K")
    assert doc["ran"] and doc["capacity"] == cap and doc["evicted"] >= 1
    assert doc["bytes"] <= 0.85 * cap
    du = cli_json(capsys, "du", str(root))
    assert du["total"]["bytes"] == doc["bytes"] <= 0.85 * cap
    assert du["total"]["objects"] == CHAINS * CHUNKS - doc["evicted"]
    assert du["ledger"]["bytes"] == du["total"]["bytes"] and du["ledger"]["capacity"] == cap
    # Without --capacity the ledger's is used: nothing more to evict.
    doc = cli_json(capsys, "gc", str(root))
    assert doc["capacity_from"] == "ledger" and doc["evicted"] == 0
    assert cli.main(["gc", str(root), "--capacity", "10G"]) == 0
    assert "evicted 0 objects" in capsys.readouterr().out


def test_info_reports_odirect_and_fs(data_dir, capsys):
    doc = cli_json(capsys, "info", str(data_dir))
    assert doc["version"] == yrcache.__version__
    assert "psync" in doc["build"]["backends"] and "checksum" in doc["build"]
    assert doc["dir"]["odirect"]["usable"] is True
    assert doc["dir"]["fs"]["type"] not in ("", "unknown")
    assert cli.main(["info"]) == 0
    assert "io_uring" in capsys.readouterr().out


def test_usage_errors_exit_2_without_traceback(tmp_path, capsys):
    missing = tmp_path / "nope"
    p = run_cli("ls", str(missing))
    assert p.returncode == 2 and "no such directory" in p.stderr and "Traceback" not in p.stderr
    for argv in (["du", str(missing)], ["fsck", str(missing)], ["gc", str(missing)],
                 ["gc", str(tmp_path)],  # not a cache root: refuses to change it
                 ["gc", str(tmp_path), "--capacity", "lots"], ["nosuchcommand"]):
        assert cli.main(argv) == 2, argv
    assert not (tmp_path / ".yrcache").exists()
    assert parse_size("10G") == 10 << 30 and parse_size("512M") == 512 << 20
    assert human(1536) == "1.5 KiB" and human(10) == "10 B"


def test_bench_help(capsys):
    p = run_cli("bench", "--help")
    assert p.returncode == 0, p.stderr
    assert "yrcache bench [io|store]" in p.stdout and "--dir" in p.stdout
    assert cli.main(["bench", "io", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out
    if importlib.util.find_spec("yrcache.bench.store_bench") is None:
        assert cli.main(["bench", "store"]) == 2
    else:
        assert cli.main(["bench", "store", "--help"]) == 0
