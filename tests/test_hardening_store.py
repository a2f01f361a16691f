# SPDX-License-Identifier: Apache-2.0
"""Adversarial tests of the object store's entry points (Store, Namespace, chain_keys, the format
helpers, the CLI): wrong types, extreme values, closed stores, roots that are missing, files,
read-only (a real read-only bind mount) or full (a small tmpfs), planted symlinks, replacing a
damaged object, and bounded memory and descriptors under store/evict churn. Every case gives a
clear typed error or the documented behaviour (docs/store.md, "Adversarial classes covered")."""
from __future__ import annotations

import errno
import gc
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

import yrcache
from yrcache import cli
from yrcache.cli.output import human
from yrcache.cli.parser import parse_size
from yrcache.store import format as object_format
from yrcache.store.keys import Namespace, chain_keys, fold_extras
from yrcache.store.store import Store

from . import store_util
from .helpers import require, run_child

BIG = 2**63


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry below ``root`` (not following symlinks): (mode, size, first bytes)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        head = p.read_bytes()[:64] if stat.S_ISREG(st.st_mode) else b""
        out[str(p.relative_to(root))] = (st.st_mode, st.st_size, head)
    return out


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def ns() -> Namespace:
    return store_util.namespace("hardening")


@pytest.fixture
def store(data_dir: Path, ns: Namespace):
    with Store(data_dir / "root", ns, janitor_period=0) as st:
        yield st


@pytest.fixture
def ro_root(data_dir: Path, ns: Namespace):
    """(writable source, read-only bind mount of it): a root populated with three objects
    (published through the writable path), seen read-only through a real read-only mount."""
    require(os.geteuid() == 0 and shutil.which("mount") is not None,
            "a read-only bind mount needs root")
    src, ro = data_dir / "src", data_dir / "ro"
    src.mkdir()
    ro.mkdir()
    keys = [store_util.make_key("ro", i) for i in range(3)]
    with Store(src, ns, janitor_period=0) as st:
        assert all(store_util.put(st, k).result(timeout=60) for k in keys)
    r = subprocess.run(["mount", "--bind", str(src), str(ro)], capture_output=True)
    require(r.returncode == 0, f"mount --bind failed: {r.stderr!r}")
    try:
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], capture_output=True)
        assert r.returncode == 0, r.stderr
        with pytest.raises(OSError) as ei:
            (ro / "probe").write_bytes(b"x")
        assert ei.value.errno == errno.EROFS  # really read-only, even for root
        yield src, ro, keys
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


# ---- A: bounded memory and descriptors under store/evict churn ---------------------------------
def test_soak_store_evict_keeps_structures_and_fds_bounded(data_dir: Path, ns: Namespace) -> None:
    """Counted in operations, not time: N stores through a root that holds ~24 of them. The
    janitor's header cache, the index, the touched set, the handle cache and the log-once set
    hold at most the live objects (or their fixed bounds), and descriptors do not accumulate."""
    seg = 4096
    obj = object_format.segment_offsets([seg])[2]
    fds0 = _fd_count()
    st = Store(data_dir / "root", ns, janitor_period=0, capacity_bytes=24 * obj, max_handles=8)
    fds_open = _fd_count()
    sizes = []
    try:
        for i in range(400):
            k = store_util.make_key("soak", i)
            data = store_util.payload(k, 0, seg)
            assert isinstance(st.put(k, [data], parent=ns.digest, chunk_index=0, token_count=16,
                                     dtype=store_util.DTYPE).result(timeout=60), bool)
            if st.lookup([k]):
                out = np.zeros(seg, np.uint8)
                assert st.get(k, [out]).result(timeout=60)
                assert np.array_equal(out, data)
            if i % 4 == 3:  # the root holds ~4 more objects past the low watermark
                assert st.run_janitor().ran
            if i % 20 == 19:
                live = {o.key_hex for o in store_util.walk(data_dir / "root")}
                sizes.append(len(st.janitor._parents))
                assert len(st.janitor._parents) <= len(live)
                assert {k[1] for k in st.janitor._parents} <= live
                assert {k.hex() for k in st._state.index} <= live
                assert {k.hex() for k in st._state.touched} <= live
                assert len(st._reader._handles) <= 8
                assert len(st._state.log_once) <= 4
                assert len(st._inflight) <= 2
                # an open object holds up to two descriptors (O_DIRECT + buffered), plus slack
                assert _fd_count() <= fds_open + 2 * 8 + 2
        s = st.stats()
        assert s["evictions"] >= 350 and s["dropped_full"] == 0, s  # churn, not growth
        assert max(sizes) <= 24
    finally:
        st.close()
    # A closed IoEngine keeps its ring and eventfd until it is freed (reported to io.py's owner)
    del st
    gc.collect()
    assert _fd_count() <= fds0


def test_janitor_header_cache_drops_replaced_objects(store: Store) -> None:
    k = store_util.make_key("replace-cache")
    assert store_util.put(store, k).result()
    store.run_janitor()
    assert [e[1] for e in store.janitor._parents] == [k.hex()]
    assert store_util.put(store, k, dedup=False).result()  # a new inode under the same name
    store.run_janitor()
    inos = {e[2] for e in store.janitor._parents}
    assert inos == {os.stat(store.path_of(k)).st_ino}
    assert store.delete(k)
    store.run_janitor()
    assert store.janitor._parents == {}


# ---- B: roots ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("root", "exc", "match"), [
    ("", ValueError, "must not be empty"),
    (b"", ValueError, "must not be empty"),
    (None, TypeError, "must be a path"),
    (3, TypeError, "must be a path"),
    (["a"], TypeError, "must be a path"),
    ("a\0b", ValueError, "NUL"),
    (b"a\0b", ValueError, "NUL"),
])
def test_bad_root_values(ns: Namespace, root: object, exc: type, match: str, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(exc, match=match):
        Store(root, ns)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []  # the current directory did not become a root


def test_bytes_and_pathlike_roots(data_dir: Path, ns: Namespace) -> None:
    with Store(os.fsencode(data_dir / "b"), ns, janitor_period=0) as st:
        assert st.root == str(data_dir / "b") and st.lookup([store_util.make_key("x")]) == 0


@pytest.mark.parametrize(("make", "err", "match"), [
    (lambda d: (d / "f").write_bytes(b"x") and d / "f", errno.ENOTDIR, "not a directory"),
    (lambda d: (d / "f").write_bytes(b"x") and d / "f" / "sub", errno.ENOTDIR, "not a directory"),
], ids=["file", "below-a-file"])
def test_root_that_is_a_file(data_dir: Path, ns: Namespace, make, err: int, match: str) -> None:
    root = make(data_dir)
    with pytest.raises(OSError, match=match) as ei:
        Store(root, ns)
    assert ei.value.errno == err and ei.value.filename == str(root)
    assert str(root) in str(ei.value)


def test_unreadable_root_names_the_root(data_dir: Path, ns: Namespace) -> None:
    require(shutil.which("setpriv") is not None and os.geteuid() == 0,
            "dropping capabilities needs setpriv and root")
    root = data_dir / "locked"
    root.mkdir()
    root.chmod(0)
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import store_util
from yrcache.store.store import Store
try:
    Store({str(root)!r}, store_util.namespace("hardening"))
except PermissionError as e:
    print("ERR", e.errno, e)
"""
    r = run_child(code, prefix=["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
                                "--bounding-set=-all", "--no-new-privs"])
    assert r.returncode == 0, r.stderr
    assert f"ERR {errno.EACCES}" in r.stdout and str(root) in r.stdout and "not accessible" in \
        r.stdout, r.stdout


# ---- C: argument checks at the call --------------------------------------------------------------
K = store_util.make_key("args")
GOOD_PUT = dict(parent=K, chunk_index=0, token_count=16, dtype="bfloat16", shape=(), dedup=True)


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"chunk_index": 2**32}, ValueError, "chunk_index"),
    ({"chunk_index": 2**40}, ValueError, "chunk_index"),
    ({"chunk_index": -1}, ValueError, "chunk_index"),
    ({"chunk_index": True}, TypeError, "chunk_index"),
    ({"chunk_index": 1.0}, TypeError, "chunk_index"),
    ({"chunk_index": "1"}, TypeError, "chunk_index"),
    ({"token_count": 0}, ValueError, "token_count"),
    ({"token_count": 2**40}, ValueError, "token_count"),
    ({"token_count": BIG}, ValueError, "token_count"),
    ({"token_count": float("nan")}, TypeError, "token_count"),
    ({"dtype": ""}, ValueError, "dtype"),
    ({"dtype": "x" * 17}, ValueError, "dtype"),
    ({"dtype": "a b"}, ValueError, "dtype"),
    ({"dtype": "f\0"}, ValueError, "dtype"),
    ({"dtype": "é"}, ValueError, "dtype"),
    ({"dtype": 5}, TypeError, "dtype"),
    ({"shape": 5}, TypeError, "shape"),
    ({"shape": "ab"}, TypeError, "shape"),
    ({"shape": [1.5]}, TypeError, "shape"),
    ({"shape": [-1]}, ValueError, "shape"),
    ({"shape": [2**64]}, ValueError, "shape"),
    ({"shape": [1] * 9}, ValueError, "shape"),
    ({"parent": b"short"}, ValueError, "parent"),
    ({"parent": None}, TypeError, "parent"),
    ({"parent": "x" * 16}, TypeError, "parent"),
    ({"dedup": "yes"}, TypeError, "dedup"),
    ({"dedup": 1}, TypeError, "dedup"),
])
def test_put_bad_arguments_raise_at_the_call(store: Store, kw: dict, exc: type, match: str) -> None:
    args = dict(GOOD_PUT, **kw)
    with pytest.raises(exc, match=match):
        store.put(K, [b"x" * 100], **args)
    store.flush()
    assert store.stats()["store_errors"] == 0 and not os.path.lexists(store.path_of(K))


@pytest.mark.parametrize(("key", "segs", "exc", "match"), [
    (16, [b"x"], TypeError, "key"),
    ("x" * 16, [b"x"], TypeError, "key"),
    (None, [b"x"], TypeError, "key"),
    (b"x" * 15, [b"x"], ValueError, "key"),
    (K, b"abc", TypeError, "segments"),
    (K, None, TypeError, "segments"),
    (K, [5], TypeError, r"segments\[0\]"),
    (K, [object()], TypeError, r"segments\[0\]"),
    (K, [], ValueError, "at least one segment"),
    (K, [b"x"] * (object_format.MAX_SEGMENTS + 1), ValueError, "segments"),
    (K, [np.zeros((4, 4), np.uint8)[:, 1]], ValueError, "contiguous"),
])
def test_put_bad_keys_and_segments(store: Store, key, segs, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        store.put(key, segs, **GOOD_PUT)


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"layers": [1.5]}, TypeError, "layers"),
    ({"layers": ["0"]}, TypeError, "layers"),
    ({"layers": [True]}, TypeError, "layers"),
    ({"layers": [-1]}, ValueError, "layers"),
    ({"layers": [BIG]}, ValueError, "layers"),
    ({"layers": 0}, TypeError, "layers"),
    ({"lengths": [-1]}, ValueError, "lengths"),
    ({"lengths": [2**41]}, ValueError, "lengths"),
    ({"lengths": [float("inf")]}, TypeError, "lengths"),
    ({"lengths": "ab"}, TypeError, "lengths"),
    ({"byte_range": (0, 0)}, ValueError, "byte_range"),
    ({"byte_range": (-1, 8)}, ValueError, "byte_range"),
    ({"byte_range": (0, 2**41)}, ValueError, "byte_range"),
    ({"byte_range": (1,)}, ValueError, "byte_range"),
    ({"byte_range": "ab"}, TypeError, "byte_range"),
    ({"byte_range": (0.5, 8)}, TypeError, "byte_range"),
])
def test_get_bad_arguments(store: Store, kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        store.get(K, [np.zeros(8, np.uint8)], **kw)


@pytest.mark.parametrize(("bufs", "exc", "match"), [
    ([b"x" * 8], ValueError, "writable"),
    ([5], TypeError, r"bufs\[0\]"),
    (bytearray(8), TypeError, "bufs"),
    (None, TypeError, "bufs"),
])
def test_get_bad_buffers(store: Store, bufs, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        store.get(K, bufs)


@pytest.mark.parametrize(("keys", "exc"), [
    (K, TypeError),            # one key, not a sequence of keys: never iterated as ints
    ([16], TypeError),         # bytes(16) would be a valid-looking all-zero key
    (["x" * 16], TypeError),
    ([b"x" * 17], ValueError),
    (None, TypeError),
])
def test_lookup_bad_keys(store: Store, keys, exc: type) -> None:
    with pytest.raises(exc):
        store.lookup(keys)
    with pytest.raises(exc):
        store.lookup_async(keys)


@pytest.mark.parametrize("method", ["exists", "delete", "read_header", "verify", "path_of",
                                    "contains"])
@pytest.mark.parametrize(("key", "exc"), [(16, TypeError), ("k" * 16, TypeError),
                                          (b"k", ValueError)])
def test_key_methods_check_the_key(store: Store, method: str, key, exc: type) -> None:
    with pytest.raises(exc):
        getattr(store, method)(key)


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"lookup_threads": 0}, ValueError, "lookup_threads"),
    ({"lookup_threads": 1025}, ValueError, "1024"),
    ({"lookup_threads": 2**31}, ValueError, "lookup_threads"),
    ({"lookup_threads": BIG}, ValueError, "lookup_threads"),
    ({"lookup_threads": True}, TypeError, "lookup_threads"),
    ({"load_threads": -1}, ValueError, "load_threads"),
    ({"store_threads": 1.5}, TypeError, "store_threads"),
    ({"capacity_bytes": 0}, ValueError, "capacity_bytes"),
    ({"capacity_bytes": BIG}, ValueError, "capacity_bytes"),
    ({"capacity_bytes": True}, TypeError, "capacity_bytes"),
    ({"capacity_bytes": 1e9}, TypeError, "capacity_bytes"),
    ({"low_watermark": float("nan")}, ValueError, "low_watermark"),
    ({"high_watermark": float("inf")}, ValueError, "high_watermark"),
    ({"low_watermark": 0}, ValueError, "low_watermark"),
    ({"low_watermark": "0.5"}, TypeError, "low_watermark"),
    ({"low_watermark": 0.99, "high_watermark": 0.5}, ValueError, "low_watermark <= high"),
    ({"janitor_period": float("nan")}, ValueError, "janitor_period"),
    ({"janitor_period": float("inf")}, ValueError, "janitor_period"),
    ({"janitor_period": -1}, ValueError, "janitor_period"),
    ({"janitor_period": 1e10}, ValueError, "janitor_period"),
    ({"handle_ttl": -1}, ValueError, "handle_ttl"),
    ({"index_ttl": None}, TypeError, "index_ttl"),
    ({"max_handles": -1}, ValueError, "max_handles"),
    ({"max_handles": 10**6}, ValueError, "max_handles"),
    ({"mac_key": "s" * 20}, TypeError, "mac_key"),
    ({"mac_key": b"short"}, ValueError, "mac_key"),
    ({"durable": "yes"}, TypeError, "durable"),
    ({"read_only": "yes"}, TypeError, "read_only"),
    ({"read_only": 1}, TypeError, "read_only"),
    ({"engine": "psync"}, TypeError, "engine"),
])
def test_store_constructor_bad_arguments(data_dir: Path, ns: Namespace, kw: dict, exc: type,
                                         match: str) -> None:
    fds = _fd_count()
    with pytest.raises(exc, match=match):
        Store(data_dir / "root", ns, **kw)
    assert _fd_count() == fds                   # nothing leaked
    assert not (data_dir / "root").exists()     # checked before anything is created


def _ns_kw(**kw: object) -> dict:
    base = dict(model="m", dtype="bfloat16", num_layers=4, kv_heads=2, head_size=64, layout="l")
    base.update(kw)
    return base


@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"extra": None}, TypeError, "extra"),
    ({"extra": [("a", "b")]}, TypeError, "extra"),
    ({"extra": {"a": 1}}, TypeError, "extra"),
    ({"extra": {1: "a"}}, TypeError, "extra"),
    ({"model": None}, TypeError, "model"),
    ({"model": ""}, ValueError, "model"),
    ({"model": "m" * 100_000}, ValueError, "too large"),
    ({"salt": None}, TypeError, "salt"),
    ({"num_layers": 0}, ValueError, "num_layers"),
    ({"num_layers": BIG}, ValueError, "num_layers"),
    ({"num_layers": True}, TypeError, "num_layers"),
    ({"num_layers": 4.0}, TypeError, "num_layers"),
    ({"chunk_tokens": float("nan")}, TypeError, "chunk_tokens"),
    ({"page_bytes": -1}, ValueError, "page_bytes"),
    ({"format_version": "1"}, TypeError, "format_version"),
])
def test_namespace_bad_fields(kw: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        Namespace(**_ns_kw(**kw))


def test_namespace_from_json_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        Namespace.from_json('{"model": "m", "bogus": 1}')
    with pytest.raises(ValueError):
        Namespace.from_json("[1, 2]")


D16 = Namespace(**_ns_kw()).digest


@pytest.mark.parametrize(("args", "kw", "exc"), [
    (("x" * 16, [1], 1), {}, TypeError),
    ((None, [1], 1), {}, TypeError),
    ((b"short", [1], 1), {}, ValueError),
    ((D16, [1], True), {}, TypeError),
    ((D16, [1], 0), {}, ValueError),
    ((D16, [1], 1.0), {}, TypeError),
    ((D16, [1], 1), {"max_chunks": -1}, ValueError),
    ((D16, [1], 1), {"max_chunks": True}, TypeError),
    ((D16, [float("nan")], 1), {}, TypeError),
    ((D16, [2**64], 1), {}, (TypeError, ValueError)),
    ((D16, [-1], 1), {}, ValueError),
    ((D16, "abc", 1), {}, ValueError),
    ((D16, [[1]], 1), {}, ValueError),
])
def test_chain_keys_bad_arguments(args: tuple, kw: dict, exc) -> None:
    with pytest.raises(exc):
        chain_keys(*args, **kw)


def test_chain_keys_extremes() -> None:
    assert chain_keys(D16, [1, 2, 3], 2**62) == []          # no full chunk
    assert chain_keys(D16, [1, 2, 3], 1, max_chunks=0) == []
    assert chain_keys(bytearray(D16), [1], 1) == chain_keys(D16, [1], 1)
    with pytest.raises(TypeError, match="extras"):
        fold_extras(D16, "abc")  # type: ignore[arg-type]


@pytest.mark.parametrize(("call", "exc"), [
    (lambda: object_format.header_bytes_for(-1), ValueError),
    (lambda: object_format.header_bytes_for(object_format.MAX_SEGMENTS + 1), ValueError),
    (lambda: object_format.header_bytes_for(1.5), TypeError),
    (lambda: object_format.align_up(5, 0), ValueError),
    (lambda: object_format.segment_offsets([-1]), ValueError),
    (lambda: object_format.segment_offsets([2**41]), ValueError),
    (lambda: object_format.describe(None), TypeError),
    (lambda: object_format.build_header(bytearray(4096), ns=D16, key=D16, parent=D16,
                                        chunk_index=2**40, token_count=1, dtype="u8", shape=(),
                                        segments=[b"x"]), ValueError),
    (lambda: object_format.build_header(bytearray(4096), ns=D16, key=D16, parent=D16, chunk_index=0,
                            token_count=1, dtype="u8", shape=(), segments=[b"x"],
                            created_unix_ns=-1), ValueError),
])
def test_format_helpers_bad_arguments(call, exc: type) -> None:
    with pytest.raises(exc):
        call()


# ---- closed stores -------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "args"), [
    ("put", (K, [b"x"])), ("get", (K, [bytearray(8)])), ("lookup", ([K],)),
    ("lookup_async", ([K],)), ("exists", (K,)), ("contains", (K,)), ("delete", (K,)),
    ("read_header", (K,)), ("verify", (K,)), ("run_janitor", ()),
])
def test_operations_after_close(data_dir: Path, ns: Namespace, method: str, args: tuple) -> None:
    st = Store(data_dir / "root", ns, janitor_period=0)
    assert store_util.put(st, K).result()
    st.close()
    kw = dict(GOOD_PUT) if method == "put" else {}
    kw.pop("dedup", None)
    with pytest.raises(yrcache.ClosedError):
        getattr(st, method)(*args, **kw)
    assert os.path.exists(st.path_of(K))       # nothing removed through a stale descriptor
    assert st.stats()["objects_stored"] == 1   # stats and flush stay usable
    st.flush()
    st.close()


# ---- E: read-only roots --------------------------------------------------------------------------
def test_read_only_root_is_load_only(ro_root, ns: Namespace, caplog) -> None:
    src, ro, keys = ro_root
    before = _tree(src)
    with caplog.at_level(logging.WARNING, logger="yrcache"):
        st = Store(ro, ns, capacity_bytes=1 << 20, janitor_period=0.01)
    try:
        warnings = [r for r in caplog.records if "load-only" in r.getMessage()]
        assert len(warnings) == 1 and "Read-only file system" in warnings[0].getMessage()
        assert st.read_only is True
        assert st.lookup(keys) == 3
        for k in keys:
            r, ok = store_util.check_get(st, k)
            assert r.ok and ok
        fut = store_util.put(st, store_util.make_key("ro", "new"))
        assert fut.result(timeout=10) is False
        assert store_util.put(st, keys[0], dedup=False).result(timeout=10) is False
        with pytest.raises(ValueError):  # bad arguments still raise on a load-only store
            st.put(K, [b"x"], **dict(GOOD_PUT, chunk_index=-1))
        assert st.stats()["dropped_read_only"] == 2
        assert st.delete(keys[0]) is False
        assert st.run_janitor().ran is False
        assert st._janitor_thread is None
        assert len([r for r in caplog.records if "load-only" in r.getMessage()]) == 2  # + put's
    finally:
        st.close()
    assert _tree(src) == before  # nothing written, touched or removed


def test_read_only_root_corrupt_object_is_a_miss_and_stays(ro_root, ns: Namespace) -> None:
    src, ro, keys = ro_root
    with Store(src, ns, janitor_period=0) as w:
        p = Path(w.path_of(keys[1])).relative_to(src)
    with open(src / p, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 16)
    with Store(ro, ns, janitor_period=0) as st:
        r, _ = store_util.check_get(st, keys[1])
        assert not r.ok and r.reason.startswith("corrupt")
        assert (src / p).exists()


def test_read_only_root_without_the_namespace(ro_root) -> None:
    src, ro, _ = ro_root
    other = store_util.namespace("not-yet-published")
    with Store(ro, other, janitor_period=0) as st:
        assert st.read_only and st.lookup([K]) == 0
        assert not st.get(K, [bytearray(8)]).result().ok
        assert not st.exists(K) and not st.verify(K).ok
        assert not (src / other.hex).exists()
        # another node publishes into it later: the load-only store finds it
        with Store(src, other, janitor_period=0) as w:
            assert store_util.put(w, K).result()
        st._state.ns_probed = -1e9  # (it looks again at most once a second)
        assert st.lookup([K]) == 1
        r, ok = store_util.check_get(st, K)
        assert r.ok and ok


def test_read_only_false_on_a_read_only_root_raises_naming_the_root(ro_root, ns) -> None:
    _, ro, _ = ro_root
    with pytest.raises(OSError, match="cache root") as ei:
        Store(ro, ns, read_only=False)
    assert ei.value.errno == errno.EROFS and ei.value.filename == str(ro)


def test_missing_root_on_a_read_only_file_system(ro_root, ns: Namespace) -> None:
    _, ro, _ = ro_root
    with pytest.raises(OSError, match="cannot be created") as ei:
        Store(ro / "sub" / "root", ns)
    assert ei.value.errno == errno.EROFS and str(ro / "sub" / "root") in str(ei.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Store(ro / "sub", ns, read_only=True)


def test_read_only_true_never_writes(data_dir: Path, ns: Namespace) -> None:
    root = data_dir / "empty"
    root.mkdir()
    with Store(root, ns, read_only=True) as st:
        assert st.read_only
        assert st.put(K, [b"x"], **GOOD_PUT).result() is False
        assert st.lookup([K]) == 0
    assert list(root.iterdir()) == []


def test_cli_on_a_read_only_root(ro_root, capsys) -> None:
    src, ro, _ = ro_root
    assert cli.main(["ls", str(ro)]) == 0
    assert cli.main(["fsck", str(ro)]) == 0
    rc = cli.main(["gc", str(ro), "--capacity", "1M"])
    err = capsys.readouterr().err
    assert rc == 2 and str(ro) in err and "Read-only" in err and "Traceback" not in err


# ---- full root -----------------------------------------------------------------------------------
def test_full_root_opens_and_drops_stores(small_tmpfs: Path, ns: Namespace) -> None:
    root = small_tmpfs / "root"
    with pytest.raises(OSError) as ei:  # fill the file system completely
        with open(small_tmpfs / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    assert ei.value.errno == errno.ENOSPC
    with Store(root, ns, janitor_period=0) as st:
        assert not st.read_only
        k = store_util.make_key("full")
        assert store_util.put(st, k).result(timeout=60) is False
        s = st.stats()
        assert s["store_errors"] == 1 and "ENOSPC" in s["errors_by_errno"]
        assert st.lookup([k]) == 0 and store_util.tmp_files(root) == []
        os.unlink(small_tmpfs / "filler")
        assert store_util.put(st, k).result(timeout=60)
        r, ok = store_util.check_get(st, k)
        assert r.ok and ok


# ---- F: a damaged object is replaceable ----------------------------------------------------------
def test_put_without_dedup_replaces_a_damaged_object(data_dir: Path, ns: Namespace) -> None:
    root = data_dir / "root"
    k = store_util.make_key("damaged")
    lens = store_util.geometry(k)
    old = store_util.segments(k, aligned=False)
    new = [np.asarray(s, np.uint8) ^ 0x5A for s in old]  # other bytes, same geometry
    kw = store_util.put_kwargs(k)
    with Store(root, ns, janitor_period=0) as a, Store(root, ns, janitor_period=0) as b:
        assert a.put(k, old, **kw).result()
        for st in (a, b):  # both keep the verified object open (handle cache) and indexed
            r, ok = store_util.check_get(st, k)
            assert r.ok and ok and k in st._reader._handles
        with open(a.path_of(k), "r+b") as f:  # damage it in place
            f.seek(object_format.segment_offsets(lens)[1][0])
            f.write(b"\x00\xff" * 8)
        damaged = Path(a.path_of(k)).read_bytes()
        assert a.put(k, new, **kw).result()            # dedup=True: the existing file is kept
        assert a.stats()["dedup_skips"] == 1 and Path(a.path_of(k)).read_bytes() == damaged
        assert a.put(k, new, dedup=False, **kw).result()   # replaced atomically
        for st in (a, b):
            out = [np.zeros(n, np.uint8) for n in lens]
            r = st.get(k, out).result()
            assert r.ok, r.reason
            assert all(np.array_equal(o, s) for o, s in zip(out, new))
        assert b.stats()["corrupt"] == 0 and os.path.exists(a.path_of(k))


# ---- G: planted namespace.json -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "dir", "dangling", "fifo"])
def test_planted_namespace_json_is_replaced_never_followed(data_dir: Path, ns: Namespace,
                                                           kind: str) -> None:
    root, outside = data_dir / "root", data_dir / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"do not touch")
    nsdir = root / ns.hex
    nsdir.mkdir(parents=True)
    target = {"file": outside / "precious", "dir": outside, "dangling": outside / "nope",
              "fifo": None}[kind]
    if target is None:
        os.mkfifo(nsdir / "namespace.json")
    else:
        (nsdir / "namespace.json").symlink_to(target)
    before = _tree(outside)
    with Store(root, ns, janitor_period=0) as st:
        k = store_util.make_key("nsjson")
        assert store_util.put(st, k).result()
        r, ok = store_util.check_get(st, k)
        assert r.ok and ok
    assert _tree(outside) == before
    p = nsdir / "namespace.json"
    assert p.is_file() and not p.is_symlink()
    assert Namespace.from_json(p.read_text()) == ns
    assert cli.main(["fsck", str(root)]) == 0


def test_namespace_json_directory_does_not_block_the_store(data_dir: Path, ns: Namespace) -> None:
    root = data_dir / "root"
    (root / ns.hex / "namespace.json").mkdir(parents=True)
    with Store(root, ns, janitor_period=0) as st:
        k = store_util.make_key("nsdir")
        assert store_util.put(st, k).result() and st.lookup([k]) == 1


# ---- D: the command line -------------------------------------------------------------------------
@pytest.fixture
def cli_root(data_dir: Path, ns: Namespace) -> Path:
    root = data_dir / "root"
    with Store(root, ns, janitor_period=0) as st:
        assert store_util.put(st, store_util.make_key("cli")).result()
    return root


@pytest.mark.parametrize("argv", [
    ["gc", "{root}", "--capacity", "1e999"],
    ["gc", "{root}", "--capacity", "1e30"],
    ["gc", "{root}", "--capacity", "9223372036854775808"],
    ["gc", "{root}", "--capacity", "-1"],
    ["gc", "{root}", "--capacity", "nan"],
    ["gc", "{root}", "--capacity", "inf"],
    ["gc", "{root}", "--capacity", "10Q"],
    ["gc", "{root}", "--low", "nan"],
    ["gc", "{root}", "--low", "0.9", "--high", "0.5"],
    ["gc", "{root}", "--tmp-max-age", "nan"],
    ["gc", "{root}", "--orphan-grace", "inf"],
    ["fsck", "{root}", "-j", "0"],
    ["fsck", "{root}", "-j", "1000000000"],
    ["fsck", "{root}", "-j", "x"],
    ["fsck", "{root}", "--tmp-max-age", "-1"],
    ["fsck", "{root}", "--mac-key-file", "{root}"],
    ["fsck", "{root}", "--mac-key-file", "{fifo}", "--ns", "0"],
    ["fsck", "{root}", "--mac-key-file", "/nonexistent", "--ns", "0"],
    ["ls", "{root}", "--ns", "zz"],
    ["ls", "{root}", "--ns", "0" * 40],
    ["ls", "{missing}"], ["du", "{missing}"], ["gc", "{missing}"], ["fsck", "{missing}"],
    ["ls", "{file}"], ["du", "{file}"], ["gc", "{file}"], ["fsck", "{file}"],
    ["ls", ""], ["gc", ""], ["ls", "a\0b"], ["info", "a\0b"], ["info", "{file}"],
    ["gc", "{plain}"], ["fsck", "{plain}", "--repair"],
    ["nosuchcommand"], [],
])
def test_cli_bad_usage_exits_2_with_a_message(cli_root: Path, data_dir: Path, argv: list,
                                              capsys) -> None:
    fifo = data_dir / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    (data_dir / "file").write_bytes(b"x")
    (data_dir / "plain").mkdir(exist_ok=True)
    subs = {"root": str(cli_root), "missing": str(data_dir / "missing"),
            "file": str(data_dir / "file"), "fifo": str(fifo), "plain": str(data_dir / "plain")}
    before = _tree(cli_root)
    rc = cli.main([a.format(**subs) for a in argv])
    out = capsys.readouterr()
    assert rc == 2, (rc, out)
    assert "error" in out.err and "Traceback" not in out.err + out.out
    assert _tree(cli_root) == before


def test_cli_sizes_and_human_bounds() -> None:
    assert parse_size("1E") == 1 << 60
    assert human(1 << 60) == "1.0 EiB"
    with pytest.raises(Exception, match="out of range"):
        parse_size("8E")
