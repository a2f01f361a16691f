# SPDX-License-Identifier: Apache-2.0
"""Build yrcache._C with CMake + Ninja (pybind11/cmake_example pattern, vLLM's env knobs).

Environment knobs (translated into -D flags; every decision is made in CMake):
  YRCACHE_LIBURING=auto|on|off   YRCACHE_CUDA=auto|on|off   YRCACHE_CUDA_ARCHS="80-real;90"
  YRCACHE_BUILD_TYPE / DEBUG=1   YRCACHE_BUILD_DIR (default build/<py-tag>)   MAX_JOBS   CMAKE_ARGS
Never imports torch.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_type = os.environ.get("YRCACHE_BUILD_TYPE") or (
            "Debug" if os.environ.get("DEBUG") == "1" else "RelWithDebInfo")
        tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
        build_dir = Path(os.environ.get("YRCACHE_BUILD_DIR", ROOT / "build" / tag))
        build_dir.mkdir(parents=True, exist_ok=True)
        version = self.distribution.get_version()
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DYRCACHE_LIBURING={os.environ.get('YRCACHE_LIBURING', 'auto')}",
            f"-DYRCACHE_CUDA={os.environ.get('YRCACHE_CUDA', 'auto')}",
            f"-DYRCACHE_CUDA_ARCHS={os.environ.get('YRCACHE_CUDA_ARCHS', '')}",
            f"-DYRCACHE_VERSION={version}",
        ]
        try:
            import pybind11  # build requirement
            args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass
        if shutil.which("ninja") or _ninja_from_wheel():
            args += ["-G", "Ninja"]
        for launcher in ("sccache", "ccache"):
            if shutil.which(launcher):
                args += [f"-DCMAKE_CXX_COMPILER_LAUNCHER={launcher}",
                         f"-DCMAKE_CUDA_COMPILER_LAUNCHER={launcher}"]
                break
        if os.environ.get("CMAKE_ARGS"):
            args += [a for a in os.environ["CMAKE_ARGS"].split() if a]
        ninja = shutil.which("ninja")
        if ninja:
            args.append(f"-DCMAKE_MAKE_PROGRAM={ninja}")
        # pip's isolated build env (cmake, ninja) lives in a temp dir that is gone on the next
        # build: a cache naming tools that no longer exist, or another generator, is started anew.
        cache = build_dir / "CMakeCache.txt"
        if cache.exists() and _stale(cache.read_text(), "-G" in args):
            shutil.rmtree(build_dir)
            build_dir.mkdir(parents=True)
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_dir, check=True)
        jobs = os.environ.get("MAX_JOBS") or os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") \
            or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)


def _stale(cache: str, ninja: bool) -> bool:
    if ninja != ("CMAKE_GENERATOR:INTERNAL=Ninja" in cache):
        return True
    for line in cache.splitlines():
        if line.startswith(("CMAKE_COMMAND:INTERNAL=", "CMAKE_MAKE_PROGRAM:")):
            if not Path(line.split("=", 1)[1]).exists():
                return True
    return False


def _ninja_from_wheel() -> bool:
    try:
        import ninja  # noqa: F401
    except ImportError:
        return False
    return True


setup(ext_modules=[CMakeExtension("yrcache._C")], cmdclass={"build_ext": CMakeBuild})
