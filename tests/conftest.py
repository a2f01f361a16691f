# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures. In CI (CI=true) a missing prerequisite FAILS instead of skipping: only tests
that must execute on a GPU may skip there."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import yrcache

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def require(ok: bool, reason: str) -> None:
    """Skip (laptop) or fail (CI) when a prerequisite of the test is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {reason}")
    pytest.skip(reason)


def uring_status() -> tuple[bool, str]:
    info = yrcache.build_info()
    if "uring" not in info["backends"]:
        return False, "io_uring backend not compiled (install liburing-dev and rebuild)"
    if not info["io_uring"]["usable"]:
        return False, f"io_uring refused on this machine: {info['io_uring']['reason']}"
    return True, ""


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


def run_child(code: str, *, prefix: list[str] | None = None, timeout: float = 120,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run Python code in a child process (optionally under setpriv etc.) with this checkout on
    the path; returns the completed process (stdout/stderr as text)."""
    full_env = dict(os.environ)
    pkg_root = Path(yrcache.__file__).resolve().parent.parent  # the yrcache this run imported
    full_env["PYTHONPATH"] = os.pathsep.join([str(pkg_root), full_env.get("PYTHONPATH", "")])
    if env:
        full_env.update(env)
    return subprocess.run([*(prefix or []), sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd="/")
