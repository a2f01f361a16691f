# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by many test files (fixtures live in conftest.py): CI awareness, the repo root,
prerequisites that skip (or fail in CI), and child processes running this checkout."""
from __future__ import annotations

import os
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


def resident_bytes(path: str | Path) -> int:
    """Bytes of ``path`` in this machine's page cache (util-linux fincore, i.e. mincore(2))."""
    p = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                       capture_output=True, text=True, check=True)
    return int(p.stdout.strip())
