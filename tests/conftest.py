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
# scripts/mfs_up.sh starts a throw-away MooseFS cluster and mounts it at these two paths (and
# writes "A:B" to /tmp/yrcache-mfs/mounts); .ci/run exports YRCACHE_SHARED_MOUNTS.
DEFAULT_SHARED_MOUNTS = (Path("/tmp/yrcache-mfs/mnt_a"), Path("/tmp/yrcache-mfs/mnt_b"))
SHARED_FS_HINT = ("start one with `sudo bash scripts/mfs_up.sh` (its default mounts are found "
                  "automatically; other mounts: YRCACHE_SHARED_MOUNTS=A:B), stop it with "
                  "`sudo bash scripts/mfs_down.sh`")
SHARED_FIXTURES = ("shared_mounts", "shared_dirs")


def _shared_mounts() -> tuple[tuple[Path, Path] | None, str]:
    env = os.environ.get("YRCACHE_SHARED_MOUNTS")
    if env:
        parts = env.split(":")
        if len(parts) != 2 or not all(parts):
            return None, f"YRCACHE_SHARED_MOUNTS={env!r} is not of the form A:B"
        a, b = Path(parts[0]), Path(parts[1])
        # An explicit setting is trusted to be two views of one FS (the same local dir twice is
        # a valid control run); it only has to exist. A dead FUSE mount fails here (ENOTCONN).
        missing = [str(m) for m in (a, b) if not m.is_dir()]
        if missing:
            return None, f"YRCACHE_SHARED_MOUNTS: not a usable directory: {', '.join(missing)}"
        return (a, b), ""
    a, b = DEFAULT_SHARED_MOUNTS
    if os.path.ismount(a) and os.path.ismount(b):  # False for a dead FUSE mount too
        return (a, b), ""
    return None, f"no shared file system mounted at {a} and {b}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the shared-FS fixtures carry the `shared_fs` marker (select or deselect
    them with -m shared_fs / -m "not shared_fs") without each test having to say so."""
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in SHARED_FIXTURES):
            item.add_marker(pytest.mark.shared_fs)


@pytest.fixture(scope="session")
def shared_mounts() -> tuple[Path, Path]:
    """(mount_a, mount_b): two mounts of one distributed FS (two "nodes"). Source:
    YRCACHE_SHARED_MOUNTS="A:B", else /tmp/yrcache-mfs/mnt_{a,b} if both are mount points;
    otherwise the test skips (fails in CI)."""
    mounts, why = _shared_mounts()
    require(mounts is not None, f"shared file system not available ({why}); {SHARED_FS_HINT}")
    assert mounts is not None
    return mounts


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
