# SPDX-License-Identifier: Apache-2.0
"""The directory layout of a cache root, and safe ways to walk it.

    root/
      .yrcache/usage.json, usage.lock, janitor.lock   capacity ledger and the janitor's lock
      .tmp/<writer>.tmp                               objects being written (renamed when complete)
      <ns hex>/namespace.json                         what the namespace fingerprints (for humans)
      <ns hex>/<k[:2]>/<k[2:4]>/<k hex>.kv            published objects

Only hex digests (ours) become path components. Every directory below the root is opened with
openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), and files are created, renamed and removed
relative to those descriptors, so a symlink planted by another writer of a shared root cannot lead
outside it.
"""
from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from .._native import _C
from .keys import is_hex_digest

META_DIR = ".yrcache"
TMP_DIR = ".tmp"
OBJ_SUFFIX = ".kv"
TMP_SUFFIX = ".tmp"
DIR_MODE = 0o755
FILE_MODE = 0o644
_SHARD_RE = re.compile(r"^[0-9a-f]{2}$")

open_beneath = _C.io.open_beneath

#: statfs magics of file systems whose client's page cache is the node-local cache of a shared
#: store (FUSE: MooseFS, GlusterFS, JuiceFS, 3FS's FUSE...; NFS, CephFS, Lustre, SMB, 9p). A read
#: there costs a network round trip and client daemon CPU; one served from the page cache costs
#: neither, and is never stale here: a published object never changes (a name that gets a new
#: object gets a new inode).
NETWORK_FS_MAGIC = {0x65735546: "fuse", 0x6969: "nfs", 0x00C36400: "ceph", 0x0BD00BD0: "lustre",
                    0xFF534D42: "cifs", 0xFE534D42: "smb2", 0x01021997: "9p"}


def network_fs(fd: int) -> str:
    """The name of the network or FUSE file system holding ``fd`` (see NETWORK_FS_MAGIC), or ""
    for a local one."""
    return NETWORK_FS_MAGIC.get(_C.io.fs_magic(fd), "")


def check_root(root: Any) -> str:
    """The absolute path of a cache root given as str, bytes or os.PathLike. TypeError for
    anything else; ValueError for an empty path (it would silently make the current directory a
    cache root) or one with a NUL byte."""
    if not isinstance(root, (str, bytes, os.PathLike)):
        raise TypeError(f"cache root must be a path (str, bytes or os.PathLike), got "
                        f"{type(root).__name__}")
    path = os.fspath(root)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError("cache root must not be empty (an empty path would make the current "
                         "directory the cache root; pass '.' to mean it)")
    if "\0" in path:
        raise ValueError(f"cache root must not contain a NUL byte: {path!r:.80}")
    return os.path.abspath(path)


def root_error(err: int, what: str, path: str) -> OSError:
    """An OSError (the subclass for ``err``) that names the cache root and says what is wrong."""
    return OSError(err, f"yrcache: cache root {what}", path)


def open_root(path: str, *, create: bool) -> int:
    """A descriptor of the cache root directory ``path`` (absolute), created (with its parents)
    when missing and ``create``. Failures raise an OSError naming the root and saying what is
    wrong with it (missing, not a directory, not accessible), with the errno kept."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        if not create:
            raise root_error(errno.ENOENT, "does not exist", path) from None
    except OSError as e:
        raise _open_root_error(e, path) from None
    try:
        os.makedirs(path, DIR_MODE, exist_ok=True)
    except OSError as e:
        raise root_error(e.errno or errno.EIO, f"does not exist and cannot be created "
                         f"({e.strerror or e})", path) from None
    try:
        return os.open(path, flags)
    except OSError as e:
        raise _open_root_error(e, path) from None


def _open_root_error(e: OSError, path: str) -> OSError:
    if e.errno == errno.ENOTDIR:
        return root_error(e.errno, "is not a directory (or a component of its path is a file)",
                          path)
    if e.errno in (errno.EACCES, errno.EPERM):
        return root_error(e.errno, f"is not accessible ({e.strerror})", path)
    return root_error(e.errno or errno.EIO, f"cannot be opened ({e.strerror or e})", path)


def object_location(key_hex: str) -> tuple[str, str]:
    """(shard directory relative to the namespace directory, file name) of an object: the one
    place that says where objects live (csrc/store/paths.h formats the same paths for batched
    lookups and touches)."""
    if not is_hex_digest(key_hex):
        raise ValueError(f"object keys are 32 lowercase hex digits, got {key_hex!r:.40}")
    return f"{key_hex[:2]}/{key_hex[2:4]}", f"{key_hex}{OBJ_SUFFIX}"


def object_relpath(key_hex: str) -> str:
    """Path of an object relative to its namespace directory."""
    return "/".join(object_location(key_hex))


def object_path(ns_hex: str, key_hex: str) -> str:
    """Path of an object relative to the root."""
    return f"{ns_hex}/{object_relpath(key_hex)}"


def object_key(shard: str, name: str) -> str | None:
    """The key (hex) of the object file ``name`` in shard directory ``shard``; None when the
    name is not an object's or the object does not belong in that shard."""
    key_hex = name[:-len(OBJ_SUFFIX)] if name.endswith(OBJ_SUFFIX) else ""
    if not is_hex_digest(key_hex) or object_location(key_hex) != (shard, name):
        return None
    return key_hex


def open_dir(dirfd: int, rel: str, *, create: bool = False) -> int:
    """A readable descriptor of directory ``rel`` beneath ``dirfd`` (no symlinks followed),
    creating missing components (mode 0755) when asked. The caller closes it."""
    flags = os.O_RDONLY | os.O_DIRECTORY
    if not create:
        return open_beneath(dirfd, rel, flags)
    # On GlusterFS, directories two clients make at the same moment settle on one identity: for
    # a few milliseconds the other client's mkdir, open or descriptor answers ESTALE (or ENOENT
    # after EEXIST). Walk again from dirfd, a little later, instead of failing a put.
    for delay in (0.001, 0.005, 0.02, 0.1, 0.3, 0.6, 0.0):
        try:
            try:
                return open_beneath(dirfd, rel, flags)
            except FileNotFoundError:
                return _make_dirs(dirfd, rel, flags)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESTALE) or not delay:
                raise
        time.sleep(delay)
    raise AssertionError("unreachable")


def _make_dirs(dirfd: int, rel: str, flags: int) -> int:
    cur = os.dup(dirfd)
    try:
        for comp in rel.split("/"):
            try:
                os.mkdir(comp, DIR_MODE, dir_fd=cur)
            except FileExistsError:
                pass
            nxt = open_beneath(cur, comp, flags)
            os.close(cur)
            cur = nxt
        return cur
    except BaseException:
        os.close(cur)
        raise


@contextmanager
def opened_dir(dirfd: int, rel: str, *, create: bool = False) -> Iterator[int]:
    fd = open_dir(dirfd, rel, create=create)
    try:
        yield fd
    finally:
        os.close(fd)


class ObjectEntry(NamedTuple):
    ns_hex: str
    key_hex: str
    size: int
    mtime: float
    ino: int


class Foreign(NamedTuple):
    relpath: str  # relative to the root
    kind: str     # "file", "dir", "symlink", "other"


def walk_objects(rootfd: int, *, foreign: list[Foreign] | None = None,
                 namespaces: set[str] | None = None) -> Iterator[ObjectEntry]:
    """Every published object under the root, by descriptor-relative scans (no symlink is
    followed). Entries that are not ours go to ``foreign`` when given. Vanishing entries (another
    node evicting meanwhile) are skipped."""
    def note(rel: str, e: os.DirEntry[str]) -> None:
        if foreign is None:
            return
        kind = ("symlink" if e.is_symlink() else "dir" if e.is_dir(follow_symlinks=False)
                else "file" if e.is_file(follow_symlinks=False) else "other")
        foreign.append(Foreign(rel, kind))

    for ns in _scandir(rootfd):
        if ns.name in (META_DIR, TMP_DIR):
            continue
        if not (is_hex_digest(ns.name) and ns.is_dir(follow_symlinks=False)):
            note(ns.name, ns)
            continue
        if namespaces is not None and ns.name not in namespaces:
            continue
        with _maybe_dir(rootfd, ns.name) as nsfd:
            if nsfd is not None:
                yield from _walk_shards(nsfd, ns.name, "", 2, note)


def _walk_shards(fd: int, ns: str, shard: str, depth: int,
                 note: Callable[[str, os.DirEntry[str]], None]) -> Iterator[ObjectEntry]:
    """The objects below shard directory ``shard`` of namespace ``ns`` (``depth`` shard levels
    left above the object files: ``ab/cd/<key>.kv``)."""
    for e in _scandir(fd):
        rel = f"{ns}/{shard}{e.name}"
        if depth:
            if not shard and e.name == "namespace.json" and e.is_file(follow_symlinks=False):
                continue
            if not (_SHARD_RE.match(e.name) and e.is_dir(follow_symlinks=False)):
                note(rel, e)
                continue
            with _maybe_dir(fd, e.name) as sub:
                if sub is not None:
                    yield from _walk_shards(sub, ns, f"{shard}{e.name}/", depth - 1, note)
            continue
        key_hex = object_key(shard.rstrip("/"), e.name)
        if key_hex is None or not e.is_file(follow_symlinks=False):
            if not e.name.startswith(".nfs"):  # NFS silly-renames
                note(rel, e)
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        yield ObjectEntry(ns, key_hex, st.st_size, st.st_mtime, st.st_ino)


def _scandir(fd: int) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(fd) as it:
            return list(it)
    except OSError:
        return []


@contextmanager
def _maybe_dir(dirfd: int, name: str) -> Iterator[int | None]:
    try:
        fd = open_beneath(dirfd, name, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ESTALE, errno.ELOOP, errno.EXDEV, errno.ENOTDIR,
                       errno.EACCES, errno.EPERM):  # vanished, foreign, or not ours to read
            yield None
            return
        raise
    try:
        yield fd
    finally:
        os.close(fd)


__all__ = ["DIR_MODE", "FILE_MODE", "META_DIR", "OBJ_SUFFIX", "TMP_DIR", "TMP_SUFFIX",
           "Foreign", "ObjectEntry", "check_root", "object_key", "object_location", "object_path",
           "object_relpath", "open_beneath", "open_dir",
           "open_root", "opened_dir", "root_error", "walk_objects"]
