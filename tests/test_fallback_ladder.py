# SPDX-License-Identifier: Apache-2.0
"""The backend ladder and privilege-dependent paths, each in a child process: io_uring blocked by
seccomp (as in Docker's default profile), permission errors and RLIMIT_MEMLOCK without
capabilities (CI runs as root, so the child drops every capability with setpriv)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import yrcache

from .helpers import require, run_child, uring_status

SECCOMP_PRELUDE = """
import errno, pyseccomp as sc
flt = sc.SyscallFilter(sc.ALLOW)
for call in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
    flt.add_rule(sc.ERRNO(errno.EPERM), call)
flt.load()
"""

NO_CAPS = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
           "--no-new-privs"]


def _need_seccomp() -> None:
    try:
        import pyseccomp  # noqa: F401
    except (ImportError, OSError) as e:
        require(False, f"pyseccomp unavailable ({e}); pip install pyseccomp (needs libseccomp2)")


def test_seccomp_blocked_uring_falls_back_to_psync(data_dir):
    _need_seccomp()
    ok, why = uring_status()
    require(ok, why)  # the point is to show a *working* io_uring being taken away
    code = SECCOMP_PRELUDE + f"""
import json, logging, io, numpy as np, yrcache
log = io.StringIO(); logging.basicConfig(stream=log, level=logging.INFO)
info = yrcache.build_info()
eng = yrcache.IoEngine()                       # auto ladder
f = eng.open({str(data_dir / 'sc.bin')!r}, "w")
data = np.random.default_rng(0).integers(0, 256, (4 << 20) + 5, dtype=np.uint8)
n = eng.pwrite(f, data, 0).result()
out = np.zeros_like(data); eng.pread(f, out, 0).result()
forced = None
try:
    yrcache.IoEngine("uring")
except yrcache.BackendUnavailableError as e:
    forced = str(e)
print(json.dumps(dict(backend=eng.backend, reason=eng.fallback_reason, n=n,
                      same=bool((out == data).all()), usable=info["io_uring"]["usable"],
                      probe=info["io_uring"]["reason"], forced=forced, log=log.getvalue())))
eng.close()
"""
    p = run_child(code)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["backend"] == "psync"
    assert "EPERM" in r["reason"] or "Operation not permitted" in r["reason"]
    assert "seccomp" in r["reason"]
    assert r["same"] and r["n"] == (4 << 20) + 5
    assert r["usable"] is False and "Operation not permitted" in r["probe"]
    assert r["forced"] and "Operation not permitted" in r["forced"]
    assert r["log"].count("using psync") == 1  # said once


def test_uring_forced_works_when_available():
    ok, why = uring_status()
    require(ok, why)
    with yrcache.IoEngine("uring") as eng:
        assert eng.backend == "uring" and eng.fallback_reason == ""
    with yrcache.IoEngine("psync") as eng:
        assert eng.backend == "psync" and eng.fallback_reason == ""


def _need_setpriv() -> None:
    require(shutil.which("setpriv") is not None, "setpriv (util-linux) not installed")
    require(os.geteuid() == 0, "dropping capabilities to test privilege errors needs root")


def test_permission_error_without_capabilities(data_dir):
    _need_setpriv()
    secret = data_dir / "secret.bin"
    secret.write_bytes(b"x" * 8192)
    secret.chmod(0)
    code = f"""
import yrcache
eng = yrcache.IoEngine()
try:
    eng.open({str(secret)!r}, "r")
except PermissionError as e:
    print("PermissionError", e.errno, e.filename)
"""
    p = run_child(code, prefix=NO_CAPS)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["PermissionError", "13", str(secret)]


@pytest.mark.uring
def test_memlock_limit_registration_falls_back(data_dir):
    """Without CAP_IPC_LOCK, RLIMIT_MEMLOCK (8 MiB here) stops registering a 64 MiB buffer: the
    engine logs it once and does the I/O unregistered, correctly."""
    _need_setpriv()
    ok, why = uring_status()
    require(ok, why)
    code = f"""
import io, json, logging, resource, numpy as np, yrcache
resource.setrlimit(resource.RLIMIT_MEMLOCK, (8 << 20, 8 << 20))
log = io.StringIO(); logging.basicConfig(stream=log, level=logging.WARNING)
eng = yrcache.IoEngine("uring")
small = eng.alloc(1 << 20)       # fits the limit
big = eng.alloc(64 << 20)        # does not
data = np.random.default_rng(1).integers(0, 256, 64 << 20, dtype=np.uint8)
np.frombuffer(big, np.uint8)[:] = data
f = eng.open({str(data_dir / 'ml.bin')!r}, "w")
eng.pwrite(f, big, 0).result()
np.frombuffer(big, np.uint8)[:] = 0
eng.pread(f, big, 0).result()
st = eng.stats()
print(json.dumps(dict(same=bool((np.frombuffer(big, np.uint8) == data).all()),
                      registered=eng._c.registered_buffers, log=log.getvalue())))
eng.close()
"""
    p = run_child(code, prefix=NO_CAPS)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["same"]
    assert r["registered"] == 1  # the small one only
    assert "registration failed" in r["log"] and "RLIMIT_MEMLOCK" in r["log"]


def test_build_info_reports_build_and_runtime(tmp_path):
    info = yrcache.build_info(tmp_path)
    assert info["version"] == yrcache.__version__
    assert "psync" in info["backends"]
    assert set(info["io_uring"]) == {"usable", "reason"}
    assert info["odirect"]["dir"] == str(tmp_path)
    assert isinstance(info["cuda"]["compiled"], bool)
    if not info["cuda"]["device_count"]:
        assert info["cuda"]["status"]  # says why no device
    if os.environ.get("CI"):
        assert info["liburing"], "CI builds with YRCACHE_LIBURING=on"
        assert info["cuda"]["compiled"], "CI builds with YRCACHE_CUDA=on"


def test_import_does_not_pull_torch():
    p = run_child("import sys, yrcache; print('torch' in sys.modules, 'vllm' in sys.modules)")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False"]
