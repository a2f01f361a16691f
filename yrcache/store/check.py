# SPDX-License-Identifier: Apache-2.0
"""Maintenance primitives shared by the store, its janitor and the ``yrcache`` command: reading
headers and small files, replacing a file atomically, scanning temp files, removing an entry only
while it is the inode that was judged, and finding orphans.

Everything works relative to directory descriptors opened beneath the root
(:mod:`yrcache.store.paths`): no symlink is followed, nothing outside the root is reached.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from .._native import _C
from . import paths
from .format import ObjectFormatError, parse_header

#: errno values of an entry that vanished meanwhile (another process or node removed it)
VANISHED_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE})
#: the largest header read (objects with many segments declare sizes above 4 KiB)
MAX_HEADER_BYTES = 1 << 20
#: ``ino`` of :func:`remove_if_same` that removes the entry only when it is a symlink


# -- reading ---------------------------------------------------------------------------------------
def header_bytes_needed(first: Any) -> int:
    """0 when the first 4 KiB of an object hold its whole header (or are no header at all),
    else the header's declared size: objects with over 120 segments. Raises ObjectFormatError
    for a size above MAX_HEADER_BYTES."""
    h, _, need = _C.store.parse_header(first)
    if h is not None or not need:
        return 0
    if need > MAX_HEADER_BYTES:
        raise ObjectFormatError(f"header size {need} out of range")
    return int(need)


def read_header_bytes(fd: int) -> bytes:
    """The header of an object file: 4 KiB, or its declared size (see header_bytes_needed)."""
    raw = os.pread(fd, 4096, 0)
    need = header_bytes_needed(raw)
    return os.pread(fd, need, 0) if need else raw


def read_header(fd: int, *, ns: bytes | None, key: bytes | None,
                mac_key: bytes | None = None) -> Any:
    """The parsed, validated header of the object open as ``fd``."""
    return parse_header(read_header_bytes(fd), ns=ns, key=key, mac_key=mac_key)


def open_object(rootfd: int, ns_hex: str, key_hex: str) -> int:
    """A read-only descriptor of a published object (the caller closes it)."""
    return paths.open_beneath(rootfd, paths.object_path(ns_hex, key_hex), os.O_RDONLY)


def read_small(dirfd: int, rel: str, limit: int = 1 << 20) -> bytes:
    """The first ``limit`` bytes of the file ``rel`` beneath ``dirfd`` (raises OSError)."""
    fd = paths.open_beneath(dirfd, rel, os.O_RDONLY)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def read_json(dirfd: int, rel: str, limit: int = 1 << 20) -> dict[str, Any]:
    """A small JSON object file (the ledger, namespace.json). Raises OSError, or ValueError when
    it is not a JSON object."""
    d = json.loads(read_small(dirfd, rel, limit))
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - the caller reports it as unreadable
    return d


# -- writing ---------------------------------------------------------------------------------------
def write_then_rename(dirfd: int, name: str, data: bytes, tmp: str, *,
                      fsync: bool = False) -> None:
    """Replace ``name`` in ``dirfd`` by a file holding ``data``: written to ``tmp`` (same
    directory), then renamed over it, so readers see the old file or the new one, never a part.
    The rename replaces whatever entry is there (a symlink too) without following it. The temp
    file is removed when anything fails."""
    try:
        fd = paths.open_beneath(dirfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                paths.FILE_MODE)
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass
        raise


# -- scanning --------------------------------------------------------------------------------------
def entry_kind(mode: int) -> str:
    """What a directory entry that is not one of ours is, for reports."""
    return ("symlink" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode)
            else "file" if stat.S_ISREG(mode) else "other")


def scan_stats(dirfd: int) -> list[tuple[str, os.stat_result]]:
    """(name, lstat) of every entry of a directory; entries vanishing meanwhile are skipped, an
    unreadable directory has none."""
    out: list[tuple[str, os.stat_result]] = []
    try:
        with os.scandir(dirfd) as it:
            for e in it:  # stat while the descriptor is open: DirEntry.stat uses it
                try:
                    out.append((e.name, e.stat(follow_symlinks=False)))
                except OSError:
                    pass
    except OSError:
        pass
    return out


class TempFile(NamedTuple):
    name: str
    size: int
    mtime: float


def tmp_entries(rootfd: int) -> tuple[list[TempFile], list[paths.Foreign]]:
    """Temp files in the root's temp directory, and the entries there that are not temp files."""
    temps: list[TempFile] = []
    foreign: list[paths.Foreign] = []
    try:
        tmpfd = paths.open_dir(rootfd, paths.TMP_DIR)
    except OSError:
        return temps, foreign
    try:
        entries = scan_stats(tmpfd)
    finally:
        os.close(tmpfd)
    for name, st in entries:
        if name.endswith(paths.TMP_SUFFIX) and stat.S_ISREG(st.st_mode):
            temps.append(TempFile(name, st.st_size, st.st_mtime))
        else:
            foreign.append(paths.Foreign(f"{paths.TMP_DIR}/{name}", entry_kind(st.st_mode)))
    return temps, foreign


# -- removing --------------------------------------------------------------------------------------
def remove_if_same(dirfd: int, rel: str, ino: int | None = None) -> tuple[str, str]:
    """Remove ``rel`` (beneath ``dirfd``) through its parent's descriptor, never following a
    symlink. With ``ino``, only while the name still holds that inode (a writer may have
    published a new object there since it was judged). Directories are kept.

    Returns (outcome, detail): "removed"; "gone" (someone else removed it); "replaced" (another
    inode, kept); "kept" (a directory); "error" with the error's text."""
    parent, _, name = rel.rpartition("/")
    try:
        d = paths.open_dir(dirfd, parent) if parent else os.dup(dirfd)
    except OSError as e:
        return ("gone", "") if e.errno in VANISHED_ERRNOS else ("error", e.strerror or str(e))
    try:
        st = os.stat(name, dir_fd=d, follow_symlinks=False)
        if ino is not None and st.st_ino != ino:
            return "replaced", "replaced meanwhile (kept)"
        if stat.S_ISDIR(st.st_mode):
            return "kept", "a directory (kept)"
        os.unlink(name, dir_fd=d)  # unlink never follows a symlink
        return "removed", ""
    except OSError as e:
        return ("gone", "") if e.errno in VANISHED_ERRNOS else ("error", e.strerror or str(e))
    finally:
        os.close(d)


def holds_other_inode(dirfd: int, rel: str, ino: int) -> bool:
    """Whether the name ``rel`` now holds another inode than ``ino`` (a stat, no open; the
    parent directories are opened confined, so a planted symlink is not followed). False when
    it cannot be told."""
    parent, _, name = rel.rpartition("/")
    try:
        with paths.opened_dir(dirfd, parent) as d:
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
    except OSError:
        return False
    return st.st_ino != ino


# -- chains ----------------------------------------------------------------------------------------
def orphans(chunks: Iterable[tuple[Any, str, str, int]], alive: dict[str, set[str]]
            ) -> Iterator[tuple[Any, str, str, int]]:
    """Chunks whose parent is not alive, parents before children. ``chunks`` are (item,
    namespace hex, parent hex, chunk index); ``alive`` maps a namespace to its live keys. The
    caller discards each orphan it removes from ``alive`` before taking the next, so a chain
    whose head is gone falls at once."""
    for c in sorted(chunks, key=lambda c: c[3]):
        _, ns_hex, parent, index = c
        if index > 0 and parent not in alive[ns_hex]:
            yield c


__all__ = ["MAX_HEADER_BYTES", "VANISHED_ERRNOS", "TempFile", "entry_kind",
           "header_bytes_needed", "holds_other_inode", "open_object", "orphans", "read_header",
           "read_header_bytes", "read_json", "read_small", "remove_if_same", "scan_stats",
           "tmp_entries", "write_then_rename"]
