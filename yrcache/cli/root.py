# SPDX-License-Identifier: Apache-2.0
"""A cache root as the ``yrcache`` command sees it: opened by descriptor (nothing below it is
reached through a symlink), its namespaces, objects, temp files and ledger."""
from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..store import check, paths
from ..store.keys import Namespace, is_hex_digest
from . import output

NS_JSON = "namespace.json"


@contextmanager
def open_root(path: str) -> Iterator[int]:
    try:
        paths.check_root(path)
    except ValueError as e:
        raise output.UsageError(str(e)) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise output.UsageError(f"{path}: no such directory") from None
    except NotADirectoryError:
        raise output.UsageError(f"{path}: not a directory") from None
    except OSError as e:
        raise output.UsageError(f"{path}: cannot open: {e.strerror or e}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _looks_like_root(rootfd: int) -> bool:
    """A cache root has the store's .yrcache/ or .tmp/ directory (every Store makes both)."""
    for name in (paths.META_DIR, paths.TMP_DIR):
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=rootfd, follow_symlinks=False).st_mode):
                return True
        except OSError:
            pass
    return False


def require_root(rootfd: int, path: str, *, mutating: bool) -> None:
    if _looks_like_root(rootfd):
        return
    if mutating:
        raise output.UsageError(
            f"{path} does not look like a yrcache root (no {paths.META_DIR}/ or "
                         f"{paths.TMP_DIR}/ directory); refusing to change it")
    output.note(f"warning: {path} does not look like a yrcache root (no {paths.META_DIR}/ or "
                f"{paths.TMP_DIR}/)")


def ns_dirs(rootfd: int) -> list[str]:
    out = []
    try:
        with os.scandir(rootfd) as it:
            for e in it:
                if is_hex_digest(e.name) and e.is_dir(follow_symlinks=False):
                    out.append(e.name)
    except OSError:
        pass
    return sorted(out)


def namespace_info(rootfd: int, ns_hex: str) -> dict[str, Any]:
    """What namespace.json says (model, dtype, layers), and whether it matches the directory."""
    info: dict[str, Any] = {"model": None, "dtype": None, "num_layers": None,
                            "namespace_json": "missing"}
    try:
        d = check.read_json(rootfd, f"{ns_hex}/{NS_JSON}")
    except FileNotFoundError:
        return info
    except (OSError, ValueError) as e:
        info["namespace_json"] = f"unreadable: {e}"
        return info
    info.update(model=d.get("model"), dtype=d.get("dtype"), num_layers=d.get("num_layers"),
                layout=d.get("layout"))
    try:
        digest = Namespace(**d).hex
    except (TypeError, ValueError) as e:
        info["namespace_json"] = f"not a Namespace of this version: {e}"
        return info
    info["namespace_json"] = "ok" if digest == ns_hex else f"digest mismatch ({digest})"
    return info


def tmp_entries(rootfd: int) -> tuple[list[dict[str, Any]], list[paths.Foreign]]:
    """Temp files in .tmp (name, bytes, mtime) and entries there that are not temp files."""
    temps, foreign = check.tmp_entries(rootfd)
    return [{"name": t.name, "bytes": t.size, "mtime": t.mtime} for t in temps], foreign


def unlink_at(rootfd: int, rel: str, *, ino: int | None = None) -> str:
    """Remove ``rel`` (relative to the root), with ``ino`` only while it is still that inode;
    directories are kept. Returns "" or why it was not removed."""
    outcome, why = check.remove_if_same(rootfd, rel, ino)
    return "" if outcome in ("removed", "gone") else why


def scan(rootfd: int, namespaces: set[str] | None = None,
          foreign: list[paths.Foreign] | None = None) -> dict[str, list[paths.ObjectEntry]]:
    objs: dict[str, list[paths.ObjectEntry]] = defaultdict(list)
    for o in paths.walk_objects(rootfd, foreign=foreign, namespaces=namespaces):
        objs[o.ns_hex].append(o)
    return objs


def resolve_ns(rootfd: int, text: str) -> str:
    t = text.strip().lower()
    if not t or any(c not in "0123456789abcdef" for c in t) or len(t) > 32:
        raise output.UsageError(
            f"--ns {text!r}: expected a namespace digest (hex, or a unique prefix)")
    present = ns_dirs(rootfd)
    hits = [n for n in present if n.startswith(t)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise output.UsageError(f"--ns {text}: no such namespace in this root")
    raise output.UsageError(f"--ns {text}: ambiguous ({len(hits)} namespaces start with it)")


def ledger(rootfd: int) -> dict[str, Any] | None:
    try:
        return check.read_json(rootfd, f"{paths.META_DIR}/usage.json")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return {"error": str(e)}


__all__ = ["NS_JSON", "ledger", "namespace_info", "ns_dirs", "open_root", "require_root",
           "resolve_ns", "scan", "tmp_entries", "unlink_at"]
