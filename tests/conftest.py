# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures. In CI (CI=true) a missing prerequisite FAILS instead of skipping: only tests
that must execute on a GPU may skip there."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import yrcache

from .helpers import require, uring_status


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    _parametrize_shared_fs(metafunc)
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["psync", pytest.param("uring", marks=pytest.mark.uring)],
                             indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "uring":
        ok, why = uring_status()
        require(ok, why)
    return request.param


@pytest.fixture
def engine(backend: str):
    with yrcache.IoEngine(backend, queue_depth=4, chunk_bytes=256 << 10,
                          max_inflight_bytes=1 << 20) as eng:
        yield eng


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A directory on a file system that accepts O_DIRECT (YRCACHE_TEST_DIR or pytest's tmp)."""
    base = os.environ.get("YRCACHE_TEST_DIR")
    d = Path(base) / tmp_path.name if base else tmp_path
    d.mkdir(parents=True, exist_ok=True)
    probe = yrcache.build_info(d)["odirect"]
    require(probe["usable"], f"O_DIRECT not usable in {d}: {probe['reason']}")
    return d


def _mount(fstype: str, target: Path, opts: str | None = None) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    cmd = ["mount", "-t", fstype]
    if opts:
        cmd += ["-o", opts]
    return subprocess.run(cmd + [fstype, str(target)], capture_output=True).returncode == 0


@pytest.fixture
def ramfs_dir(tmp_path: Path):
    """A ramfs mount: refuses O_DIRECT at open with EINVAL (needs root)."""
    d = tmp_path / "ramfs"
    d.mkdir()
    require(_mount("ramfs", d), "mounting ramfs needs root")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs (accepts O_DIRECT since Linux 6.6) for ENOSPC tests (needs root)."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    require(_mount("tmpfs", d, "size=1m"), "mounting tmpfs needs root")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def ro_bind(tmp_path: Path):
    """ro_bind(src) -> a read-only bind mount of directory ``src`` (EROFS on every write, even
    for root, unlike chmod); unmounted after the test (needs root)."""
    mounts: list[Path] = []

    def make(src: Path) -> Path:
        d = tmp_path / f"ro-{len(mounts)}"
        d.mkdir()
        ok = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
            ["mount", "--bind", str(src), str(d)], capture_output=True).returncode == 0
        require(ok, "a read-only bind mount needs root and mount(8)")
        mounts.append(d)
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(d)], capture_output=True,
                           text=True)
        require(r.returncode == 0, f"remounting {d} read-only failed: {r.stderr.strip()}")
        return d

    try:
        yield make
    finally:
        for d in reversed(mounts):
            subprocess.run(["umount", "-l", str(d)], check=False)


# ---- shared (distributed) file system: one FS mounted twice, standing for two nodes -----------
# Two real distributed file systems, each mounted twice on this machine (two "nodes"):
# scripts/mfs_up.sh (MooseFS) and scripts/gluster_up.sh (GlusterFS), each writing "A:B" to its
# mounts file. .ci/run starts both and exports YRCACHE_SHARED_MOUNTS="moosefs=A:B,glusterfs=C:D".
DEFAULT_SHARED_MOUNTS = {
    "moosefs": (Path("/tmp/yrcache-mfs/mnt_a"), Path("/tmp/yrcache-mfs/mnt_b")),
    "glusterfs": (Path("/tmp/yrcache-gluster/mnt_a"), Path("/tmp/yrcache-gluster/mnt_b")),
}
SHARED_FS_HINT = ("start them with `sudo bash scripts/mfs_up.sh` and `sudo bash "
                  "scripts/gluster_up.sh` (their default mounts are found automatically; other "
                  "mounts: YRCACHE_SHARED_MOUNTS=A:B or name=A:B,name=C:D), stop them with the "
                  "matching *_down.sh")
SHARED_FIXTURES = ("shared_mounts", "shared_dirs")


def _shared_file_systems() -> tuple[dict[str, tuple[Path, Path]], str]:
    """name -> (mount_a, mount_b) of every shared file system to test on, and why there is none."""
    env = os.environ.get("YRCACHE_SHARED_MOUNTS")
    if env:
        out: dict[str, tuple[Path, Path]] = {}
        for i, item in enumerate(env.split(",")):
            name, _, pair = item.rpartition("=")
            parts = pair.split(":")
            if len(parts) != 2 or not all(parts):
                return {}, f"YRCACHE_SHARED_MOUNTS={env!r}: {item!r} is not of the form [name=]A:B"
            a, b = Path(parts[0]), Path(parts[1])
            # An explicit setting is trusted to be two views of one FS (the same local dir twice
            # is a valid control run); it only has to exist. A dead FUSE mount fails (ENOTCONN).
            missing = [str(m) for m in (a, b) if not m.is_dir()]
            if missing:
                return {}, f"YRCACHE_SHARED_MOUNTS: not a usable directory: {', '.join(missing)}"
            out[name or f"fs{i}"] = (a, b)
        return out, ""
    found = {name: (a, b) for name, (a, b) in DEFAULT_SHARED_MOUNTS.items()
             if os.path.ismount(a) and os.path.ismount(b)}   # False for a dead FUSE mount too
    return found, "" if found else "no shared file system mounted at " + " or ".join(
        f"{a} and {b}" for a, b in DEFAULT_SHARED_MOUNTS.values())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the shared-FS fixtures carry the `shared_fs` marker (select or deselect
    them with -m shared_fs / -m "not shared_fs") without each test having to say so."""
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in SHARED_FIXTURES):
            item.add_marker(pytest.mark.shared_fs)


def _parametrize_shared_fs(metafunc: pytest.Metafunc) -> None:
    """Store-level shared-FS tests run on every shared file system found; the (slow) vLLM ones
    on the first only."""
    if not any(f in metafunc.fixturenames for f in SHARED_FIXTURES):
        return
    names = list(_shared_file_systems()[0]) or ["none"]
    if metafunc.definition.get_closest_marker("vllm") or any(
            m.name == "vllm" for m in getattr(metafunc.module, "pytestmark", [])):
        names = names[:1]
    metafunc.parametrize("shared_fs", names, scope="session")


@pytest.fixture(scope="session")
def shared_mounts(shared_fs: str) -> tuple[Path, Path]:
    """(mount_a, mount_b): two mounts of one distributed FS (two "nodes"), for each file system
    found (``shared_fs`` names it). Source: YRCACHE_SHARED_MOUNTS="[name=]A:B[,...]", else the
    default mounts of scripts/mfs_up.sh and scripts/gluster_up.sh that are mounted; otherwise the
    test skips (fails in CI)."""
    found, why = _shared_file_systems()
    require(shared_fs in found, f"shared file system not available ({why}); {SHARED_FS_HINT}")
    return found[shared_fs]


@pytest.fixture
def shared_dirs(shared_mounts: tuple[Path, Path], request: pytest.FixtureRequest):
    """(dir_on_a, dir_on_b): a fresh directory created through mount A, seen through mount B under
    the same relative name; removed (errors ignored) after the test."""
    mount_a, mount_b = shared_mounts
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    rel = f"yrcache-test-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    dir_a, dir_b = mount_a / rel, mount_b / rel
    dir_a.mkdir()
    # Visibility across mounts is fast (~1 ms) but not instant on a loaded machine: poll.
    deadline = time.monotonic() + 5.0
    while not dir_b.is_dir():
        if time.monotonic() > deadline:
            shutil.rmtree(dir_a, ignore_errors=True)
            pytest.fail(f"{dir_a} created through mount A is not visible as {dir_b} after 5 s")
        time.sleep(0.005)
    try:
        yield dir_a, dir_b
    finally:
        shutil.rmtree(dir_a, ignore_errors=True)
