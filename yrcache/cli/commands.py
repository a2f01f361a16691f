# SPDX-License-Identifier: Apache-2.0
"""The ``yrcache`` command line (``python -m yrcache``): inspect, check and maintain a cache root.

    yrcache info [DIR]                 build, io_uring, and O_DIRECT / file system type of DIR
    yrcache ls ROOT [--ns HEX] [--long] namespaces, or the objects of one namespace
    yrcache du ROOT                    bytes per namespace, the usage ledger, temp files
    yrcache gc ROOT [--capacity 10G]   one janitor pass now
    yrcache fsck ROOT [--repair]       verify every object; find foreign files, orphans, temp files
    yrcache bench [io|store] [ARGS]    the benchmarks (io: yrcache.bench.io_bench)

Every command prints text for people, or one JSON document with ``--json``. Exit status: 0 ok,
1 fsck found problems (left unrepaired), 2 bad usage or an unusable ROOT.

The tools work on descriptors like the store itself (layout_fs): nothing below ROOT is reached
through a symlink, and removals happen relative to directory descriptors. Read-only commands
(info, ls, du, fsck without --repair) never change the root.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from .. import envs
from ..io.engine import IoEngine
from ..store import check, paths
from ..store.format import ObjectFormatError, describe
from ..store.keys import Namespace, is_hex_digest
from ..store.reader import verify_file

PROG = "yrcache"
NS_JSON = "namespace.json"
#: fsck's parallelism: more threads than this only queue on the same disk
MAX_JOBS = 256


class UsageError(Exception):
    """A problem with the command line or ROOT: message on stderr, exit status 2."""


# -- small helpers ---------------------------------------------------------------------------------
def human(n: float | None) -> str:
    """Bytes for people: ``1536`` -> ``1.5 KiB``."""
    if n is None:
        return "-"
    n = float(n)
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """``10G``, ``512M``, ``1.5GiB``, ``4096`` -> bytes (binary units), at most 8 EiB."""
    try:
        n = envs.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return n


def _bounded(conv: Callable[[str], Any], lo: float, hi: float, what: str, *,
             lo_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``conv(text)`` within [lo, hi] (or (lo, hi]); nan and inf are refused
    (a nan would compare False everywhere: never stale, never evicted)."""
    def parse(text: str) -> Any:
        try:
            v = conv(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not ((lo < v if lo_open else lo <= v) and v <= hi):   # nan fails every comparison
            raise argparse.ArgumentTypeError(
                f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {text}")
        return v
    return parse


_fraction = _bounded(float, 0, 1, "a number", lo_open=True)
_seconds = _bounded(float, 0, 1e9, "a number of seconds")
_jobs = _bounded(int, 1, MAX_JOBS, "an integer")


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _age(seconds: float) -> str:
    s = max(0.0, seconds)
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.1f} {unit}"
    return f"{s:.0f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
           right: frozenset[int] | set[int] = frozenset()) -> str:
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: Callable[[dict[str, Any]], str]
          ) -> None:
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=False, default=str))
    else:
        out = text(doc)
        if out:
            print(out)


def _note(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


# -- the root --------------------------------------------------------------------------------------
@contextmanager
def _open_root(path: str) -> Iterator[int]:
    try:
        paths.check_root(path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such directory") from None
    except NotADirectoryError:
        raise UsageError(f"{path}: not a directory") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot open: {e.strerror or e}") from None
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


def _require_root(rootfd: int, path: str, *, mutating: bool) -> None:
    if _looks_like_root(rootfd):
        return
    if mutating:
        raise UsageError(f"{path} does not look like a yrcache root (no {paths.META_DIR}/ or "
                         f"{paths.TMP_DIR}/ directory); refusing to change it")
    _note(f"warning: {path} does not look like a yrcache root (no {paths.META_DIR}/ or {paths.TMP_DIR}/)")


def _ns_dirs(rootfd: int) -> list[str]:
    out = []
    try:
        with os.scandir(rootfd) as it:
            for e in it:
                if is_hex_digest(e.name) and e.is_dir(follow_symlinks=False):
                    out.append(e.name)
    except OSError:
        pass
    return sorted(out)


def _namespace_info(rootfd: int, ns_hex: str) -> dict[str, Any]:
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


def _tmp_entries(rootfd: int) -> tuple[list[dict[str, Any]], list[paths.Foreign]]:
    """Temp files in .tmp (name, bytes, mtime) and entries there that are not temp files."""
    temps, foreign = check.tmp_entries(rootfd)
    return [{"name": t.name, "bytes": t.size, "mtime": t.mtime} for t in temps], foreign


def _unlink_at(rootfd: int, rel: str, *, ino: int | None = None) -> str:
    """Remove ``rel`` (relative to the root), with ``ino`` only while it is still that inode;
    directories are kept. Returns "" or why it was not removed."""
    outcome, why = check.remove_if_same(rootfd, rel, ino)
    return "" if outcome in ("removed", "gone") else why


# -- info ------------------------------------------------------------------------------------------
def _unescape_mount(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def fs_type(path: str) -> dict[str, Any]:
    """File system type, source and mount point of ``path``: the longest mount point of
    /proc/self/mountinfo that contains it, else ``stat -f``."""
    real = os.path.realpath(path)
    best: dict[str, Any] | None = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                left, sep, right = line.partition(" - ")
                lf, rf = left.split(), right.split()
                if not sep or len(lf) < 5 or not rf:
                    continue
                mnt = _unescape_mount(lf[4])
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and (best is None or len(mnt) >= len(best["mountpoint"])):
                    best = {"type": rf[0], "source": _unescape_mount(rf[1]) if len(rf) > 1 else "",
                            "mountpoint": mnt, "options": lf[5] if len(lf) > 5 else "",
                            "via": "mountinfo"}
    except OSError:
        pass
    if best is not None:
        return best
    if shutil.which("stat"):
        try:
            p = subprocess.run(["stat", "-f", "-c", "%T", real], capture_output=True, text=True,
                               timeout=10, check=False)
            if p.returncode == 0 and p.stdout.strip():
                return {"type": p.stdout.strip(), "source": "", "mountpoint": "", "options": "",
                        "via": "stat -f"}
        except (OSError, subprocess.SubprocessError):
            pass
    return {"type": "unknown", "source": "", "mountpoint": "", "options": "", "via": "none"}


def cmd_info(args: argparse.Namespace) -> int:
    import yrcache

    from .. import envs
    d = args.dir
    if d is not None and (not d or "\0" in d or not os.path.isdir(d)):
        raise UsageError(f"{d}: no such directory")
    b = yrcache.build_info(d)
    doc: dict[str, Any] = {"version": yrcache.__version__, "build": {
        k: v for k, v in b.items() if k not in ("io_uring", "odirect", "version")}}
    doc["io_uring"] = b["io_uring"]
    doc["default_backend"] = ("uring" if "uring" in b["backends"] and b["io_uring"]["usable"]
                              else "psync")
    doc["env"] = {k: v for k in envs.ENV if (v := envs.raw(k)) is not None}
    doc["env_known"] = {k: {"default": v.default, "doc": v.doc} for k, v in envs.ENV.items()}
    unknown = sorted(k for k in os.environ if k.startswith("YRCACHE_") and k not in envs.ENV)
    if unknown:   # a typo would otherwise be silently ignored
        doc["env_unknown"] = unknown
    if d is not None:
        doc["dir"] = {"path": os.path.abspath(d), "odirect": b["odirect"], "fs": fs_type(d)}

    def text(doc: dict[str, Any]) -> str:
        bi = doc["build"]
        cuda = bi.get("cuda") or {}
        ur = doc["io_uring"]
        lines = [
            f"yrcache {doc['version']} ({bi.get('build_type', '?')}, {bi.get('compiler', '?')})",
            (f"  backends:   {', '.join(bi.get('backends', []))} (auto picks "
             f"{doc['default_backend']})"),
            f"  liburing:   {bi.get('liburing') or 'not compiled'}",
            f"  io_uring:   {'usable' if ur['usable'] else 'unusable: ' + ur['reason']}",
            f"  checksum:   {bi.get('checksum', '?')}"]
        if cuda.get("compiled"):
            lines.append(f"  cuda:       compiled (toolkit {cuda.get('toolkit')}, archs "
                         f"{cuda.get('archs')}); devices {cuda.get('device_count', 0)}"
                         + (f" - {cuda['status']}" if cuda.get("status") else ""))
        else:
            lines.append("  cuda:       not compiled")
        lines.append(f"  cufile:     {'yes' if bi.get('cufile') else 'no'}")
        for k, v in doc["env"].items():
            lines.append(f"  env:        {k}={v}")
        for k in doc.get("env_unknown", []):
            lines.append(f"  env:        {k} is not a yrcache variable (known: yrcache info "
                         f"--json, env_known)")
        if "dir" in doc:
            dd = doc["dir"]
            od = dd["odirect"]
            fs = dd["fs"]
            lines += [f"{dd['path']}:",
                      f"  O_DIRECT:   {'usable' if od['usable'] else 'unusable: ' + od['reason']}",
                      f"  fs:         {fs['type']}"
                      + (f" ({fs['source']} on {fs['mountpoint']})" if fs["mountpoint"] else "")]
        return "\n".join(lines)

    _emit(args, doc, text)
    return 0


# -- ls --------------------------------------------------------------------------------------------
def _scan(rootfd: int, namespaces: set[str] | None = None,
          foreign: list[paths.Foreign] | None = None) -> dict[str, list[paths.ObjectEntry]]:
    objs: dict[str, list[paths.ObjectEntry]] = defaultdict(list)
    for o in paths.walk_objects(rootfd, foreign=foreign, namespaces=namespaces):
        objs[o.ns_hex].append(o)
    return objs


def _resolve_ns(rootfd: int, text: str) -> str:
    t = text.strip().lower()
    if not t or any(c not in "0123456789abcdef" for c in t) or len(t) > 32:
        raise UsageError(f"--ns {text!r}: expected a namespace digest (hex, or a unique prefix)")
    present = _ns_dirs(rootfd)
    hits = [n for n in present if n.startswith(t)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise UsageError(f"--ns {text}: no such namespace in this root")
    raise UsageError(f"--ns {text}: ambiguous ({len(hits)} namespaces start with it)")


def _ns_rows(rootfd: int, objs: dict[str, list[paths.ObjectEntry]]) -> list[dict[str, Any]]:
    rows = []
    for ns in sorted(set(_ns_dirs(rootfd)) | set(objs)):
        info = _namespace_info(rootfd, ns)
        lst = objs.get(ns, [])
        rows.append({"ns": ns, **info, "objects": len(lst), "bytes": sum(o.size for o in lst)})
    return rows


def cmd_ls(args: argparse.Namespace) -> int:
    with _open_root(args.root) as rootfd:
        _require_root(rootfd, args.root, mutating=False)
        if args.ns is None:
            rows = _ns_rows(rootfd, _scan(rootfd))
            doc: dict[str, Any] = {"root": os.path.abspath(args.root), "namespaces": rows,
                                   "objects": sum(r["objects"] for r in rows),
                                   "bytes": sum(r["bytes"] for r in rows)}

            def text(doc: dict[str, Any]) -> str:
                t = _table(["NAMESPACE", "MODEL", "DTYPE", "LAYERS", "OBJECTS", "BYTES"],
                           [[r["ns"], r["model"] or "?", r["dtype"] or "?",
                             r["num_layers"] if r["num_layers"] is not None else "?",
                             r["objects"], human(r["bytes"])] for r in doc["namespaces"]],
                           right={3, 4, 5})
                return (f"{t}\n{_plural(len(doc['namespaces']), 'namespace')}, "
                        f"{_plural(doc['objects'], 'object')}, {human(doc['bytes'])}")
            _emit(args, doc, text)
            return 0

        ns = _resolve_ns(rootfd, args.ns)
        lst = sorted(_scan(rootfd, {ns}).get(ns, []), key=lambda o: o.key_hex)
        items: list[dict[str, Any]] = []
        for o in lst:
            it: dict[str, Any] = {"key": o.key_hex, "bytes": o.size, "mtime": o.mtime}
            if args.long:
                try:
                    fd = check.open_object(rootfd, ns, o.key_hex)
                    try:
                        h = check.read_header(fd, ns=bytes.fromhex(ns),
                                              key=bytes.fromhex(o.key_hex))
                    finally:
                        os.close(fd)
                    it["header"] = describe(h)
                except (OSError, ObjectFormatError) as e:
                    it["header"] = None
                    it["error"] = str(e)
            items.append(it)
        doc = {"root": os.path.abspath(args.root), "ns": ns, **_namespace_info(rootfd, ns),
               "objects": items, "count": len(items), "bytes": sum(i["bytes"] for i in items)}

        def text(doc: dict[str, Any]) -> str:
            head = ["KEY", "SIZE", "MTIME"]
            if args.long:
                head += ["CHUNK", "TOKENS", "PARENT", "SEGMENTS"]
            rows = []
            for i in doc["objects"]:
                r = [i["key"], human(i["bytes"]), _when(i["mtime"])]
                if args.long:
                    h = i.get("header")
                    r += ([h["chunk_index"], h["tokens"], h["parent"], h["segments"]] if h
                          else ["!", "", f"invalid: {i.get('error')}", ""])
                rows.append(r)
            t = _table(head, rows, right={1, 3, 4, 6})
            what = f"{doc['model'] or '?'} {doc['dtype'] or '?'} layers {doc['num_layers'] or '?'}"
            return f"{doc['ns']} ({what})\n{t}\n{doc['count']} objects, {human(doc['bytes'])}"
        _emit(args, doc, text)
    return 0


# -- du --------------------------------------------------------------------------------------------
def _ledger(rootfd: int) -> dict[str, Any] | None:
    try:
        return check.read_json(rootfd, f"{paths.META_DIR}/usage.json")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return {"error": str(e)}


def cmd_du(args: argparse.Namespace) -> int:
    with _open_root(args.root) as rootfd:
        _require_root(rootfd, args.root, mutating=False)
        foreign: list[paths.Foreign] = []
        objs = _scan(rootfd, foreign=foreign)
        temps, tmp_foreign = _tmp_entries(rootfd)
        rows = [{"ns": r["ns"], "model": r["model"], "objects": r["objects"], "bytes": r["bytes"]}
                for r in _ns_rows(rootfd, objs)]
        total = {"objects": sum(r["objects"] for r in rows), "bytes": sum(r["bytes"] for r in rows)}
        tmp = {"files": len(temps), "bytes": sum(t["bytes"] for t in temps)}
        doc: dict[str, Any] = {"root": os.path.abspath(args.root), "namespaces": rows,
                               "total": total, "ledger": _ledger(rootfd), "tmp": tmp,
                               "foreign": len(foreign) + len(tmp_foreign)}

    def text(doc: dict[str, Any]) -> str:
        t = _table(["NAMESPACE", "MODEL", "OBJECTS", "BYTES"],
                   [[r["ns"], r["model"] or "?", r["objects"], human(r["bytes"])]
                    for r in doc["namespaces"]] +
                   [["total", "", doc["total"]["objects"], human(doc["total"]["bytes"])]],
                   right={2, 3})
        lines = [t]
        led = doc["ledger"]
        if led is None:
            lines.append("ledger: none (no janitor pass or store flush yet)")
        elif "error" in led:
            lines.append(f"ledger: unreadable ({led['error']})")
        else:
            cap = led.get("capacity")
            s = f"ledger: {human(led.get('bytes', 0))}"
            if cap:
                s += f" of {human(cap)} ({100 * led.get('bytes', 0) / cap:.0f}%)"
            if led.get("scanned_at"):
                ago = _age(time.time() - led["scanned_at"])
                s += (f", scanned {_when(led['scanned_at'])} ({ago} ago) by "
                      f"{led.get('scanned_by', '?')}")
            else:
                s += ", never scanned by a janitor"
            lines.append(s)
        lines.append(f"temp files: {doc['tmp']['files']} ({human(doc['tmp']['bytes'])})")
        if doc["foreign"]:
            lines.append(f"foreign entries: {doc['foreign']} (see fsck)")
        return "\n".join(lines)

    _emit(args, doc, text)
    return 0


# -- gc --------------------------------------------------------------------------------------------
def cmd_gc(args: argparse.Namespace) -> int:
    from ..store.janitor import Janitor
    if args.low > args.high:
        raise UsageError(f"--low ({args.low}) must not exceed --high ({args.high})")
    with _open_root(args.root) as rootfd:
        _require_root(rootfd, args.root, mutating=True)
        cap, source = args.capacity, "--capacity"
        if cap is None:
            led = _ledger(rootfd) or {}
            c = led.get("capacity")
            cap, source = (c, "ledger") if isinstance(c, int) and c > 0 else (None, "none")
        elif cap == 0:
            cap, source = None, "--capacity none"
        try:
            jan = Janitor(rootfd, capacity=cap, low_watermark=args.low, high_watermark=args.high,
                          tmp_max_age=args.tmp_max_age, orphan_grace=args.orphan_grace)
            try:
                rep = jan.run_once(blocking=True)
            finally:
                jan.close()
        except OSError as e:  # e.g. a read-only root: the janitor cannot lock or remove there
            raise UsageError(f"{args.root}: cannot run the janitor here: "
                             f"{e.strerror or e}") from None
    doc: dict[str, Any] = {"root": os.path.abspath(args.root), "capacity": cap,
                           "capacity_from": source, "low_watermark": args.low,
                           "high_watermark": args.high, "tmp_max_age": args.tmp_max_age,
                           "orphan_grace": args.orphan_grace, **dataclasses.asdict(rep)}

    def text(doc: dict[str, Any]) -> str:
        if doc["capacity"]:
            c = doc["capacity"]
            head = (f"capacity {human(c)} (from {doc['capacity_from']}): above "
                    f"{human(c * doc['high_watermark'])} evict down to "
                    f"{human(c * doc['low_watermark'])}")
        else:
            head = "no capacity (pass --capacity): temp files and orphans only"
        return "\n".join([
            f"gc {doc['root']}: {head}",
            (f"  evicted {doc['evicted']} objects ({human(doc['evicted_bytes'])}), orphans "
             f"{doc['orphans']}, invalid {doc['corrupt']}, temp files {doc['tmp_reclaimed']}"),
            (f"  now {_plural(doc['objects'], 'object')}, {human(doc['bytes'])} in "
             f"{_plural(len(doc['by_namespace']), 'namespace')} ({doc['seconds']:.2f} s)")])

    _emit(args, doc, text)
    return 0


# -- fsck ------------------------------------------------------------------------------------------
def _load_mac_key(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        # O_NONBLOCK: a FIFO given by mistake must not hang the command; only files are keys
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"--mac-key-file {path}: not a regular file")
            raw = os.read(fd, 4096)
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise UsageError(f"--mac-key-file {path!r}: {getattr(e, 'strerror', None) or e}") from None
    s = raw.strip()
    key = raw
    if 32 <= len(s) <= 128 and len(s) % 2 == 0:
        try:
            key = bytes.fromhex(s.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            key = raw
    if not 16 <= len(key) <= 64:
        raise UsageError(f"--mac-key-file {path}: a MAC key is 16-64 bytes (raw, or as hex), "
                         f"got {len(key)}")
    return key


def _check_object(engine: IoEngine, rootfd: int, o: paths.ObjectEntry, mac_key: bytes | None
                  ) -> tuple[str, str, Any]:
    """("ok"|"corrupt"|"unreadable"|"vanished", reason, header or None) of one object, verified
    as the store's loads verify it."""
    try:
        f = engine.open(paths.object_path(o.ns_hex, o.key_hex), "r", dir_fd=rootfd)
    except OSError as e:
        if e.errno in check.VANISHED_ERRNOS:
            return "vanished", "", None
        return "unreadable", str(e), None
    try:
        h = verify_file(engine, f, os.fstat(f.fileno()).st_size, ns=bytes.fromhex(o.ns_hex),
                        key=bytes.fromhex(o.key_hex), mac_key=mac_key)
    except ObjectFormatError as e:
        if str(e).startswith("unsupported format version"):  # another yrcache version's object
            return "unreadable", str(e), None
        return "corrupt", str(e), None
    except OSError as e:
        if e.errno in check.VANISHED_ERRNOS:
            return "vanished", "", None
        return "unreadable", str(e), None
    finally:
        f.close()
    return "ok", "", h


def _problem(o: paths.ObjectEntry, **fields: Any) -> dict[str, Any]:
    return {"path": paths.object_path(o.ns_hex, o.key_hex), "ns": o.ns_hex,
            "key": o.key_hex, **fields}


def _fsck_objects(args: argparse.Namespace, rootfd: int, objs: list[paths.ObjectEntry],
                  mac_key: bytes | None) -> tuple[list[Any], list[Any], list[Any]]:
    """(corrupt, unreadable, valid (entry, header) pairs) of every object, verified in
    parallel."""
    engine = IoEngine()
    try:
        with ThreadPoolExecutor(args.jobs) as ex:
            results = list(ex.map(lambda o: _check_object(engine, rootfd, o, mac_key), objs))
    finally:
        engine.close()
    bad: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []
    valid: list[tuple[paths.ObjectEntry, Any]] = []
    for o, (status, why, h) in zip(objs, results):
        if status == "ok":
            valid.append((o, h))
        elif status == "corrupt":
            bad.append(_problem(o, reason=why, _o=o))
        elif status == "unreadable":
            unreadable.append(_problem(o, reason=why))
    return bad, unreadable, valid


def _fsck_orphans(valid: list[tuple[paths.ObjectEntry, Any]], now: float, grace: float
                  ) -> tuple[list[Any], list[Any]]:
    """(orphans, young orphans): chunks whose parent is not a valid object of the namespace,
    transitively, like the janitor; young ones may be an out-of-order publish."""
    alive: dict[str, set[str]] = defaultdict(set)
    for o, _ in valid:
        alive[o.ns_hex].add(o.key_hex)
    orphans: list[dict[str, Any]] = []
    young: list[dict[str, Any]] = []
    chunks = [(o, o.ns_hex, h.parent.hex(), h.chunk_index) for o, h in valid]
    for o, _, parent, index in check.orphans(chunks, alive):
        d = _problem(o, parent=parent, chunk_index=index, _o=o)
        if now - o.mtime <= grace:
            young.append(d)
            continue
        orphans.append(d)
        alive[o.ns_hex].discard(o.key_hex)
    return orphans, young


def _fsck_foreign(rootfd: int, foreign: list[paths.Foreign], now: float, max_age: float
                  ) -> list[dict[str, Any]]:
    """Foreign entries as problems. The store writes namespace.json through a `.namespace.*`
    temp file: a young one is a writer at work, not debris."""
    out: list[dict[str, Any]] = []
    for fe in foreign:
        base = fe.relpath.rsplit("/", 1)[-1]
        if fe.kind == "file" and base.startswith(".namespace.") and fe.relpath.count("/") == 1:
            try:
                st = os.stat(fe.relpath, dir_fd=rootfd, follow_symlinks=False)
                if now - st.st_mtime <= max_age:
                    continue
            except OSError:
                continue
        out.append({"path": fe.relpath, "kind": fe.kind})
    return out


def _fsck_repair(rootfd: int, problems: dict[str, list[dict[str, Any]]]) -> None:
    """Remove what fsck found (invalid objects and orphans only while they are the inode that was
    judged; foreign directories are kept), noting the outcome in each problem."""
    def note(p: dict[str, Any], err: str) -> None:
        p["repaired"] = not err
        if err:
            p["repair_error"] = err

    for p in problems["corrupt"] + problems["orphans"]:
        note(p, _unlink_at(rootfd, p["path"], ino=p.pop("_o").ino))
    for p in problems["foreign"]:
        if p["kind"] == "dir":
            note(p, "a directory: not removed (inspect it by hand)")
        else:
            note(p, _unlink_at(rootfd, p["path"]))
    for p in problems["stale_temp"]:
        note(p, _unlink_at(rootfd, f"{paths.TMP_DIR}/{p['name']}"))


def _fsck_scan(args: argparse.Namespace, rootfd: int, mac_key: bytes | None, now: float
               ) -> dict[str, Any]:
    only = {_resolve_ns(rootfd, args.ns)} if args.ns else None
    foreign: list[paths.Foreign] = []
    objs = [o for lst in _scan(rootfd, only, foreign).values() for o in lst]
    if only is not None:  # entries outside the chosen namespace are not ours to judge
        foreign = [f for f in foreign if f.relpath.split("/", 1)[0] in only]
    temps, tmp_foreign = ([], []) if only is not None else _tmp_entries(rootfd)
    bad, unreadable, valid = _fsck_objects(args, rootfd, objs, mac_key)
    orphans, young = _fsck_orphans(valid, now, args.orphan_grace)
    stale = [dict(t, age=now - t["mtime"]) for t in temps if now - t["mtime"] > args.tmp_max_age]
    ns_notes = []
    for ns in sorted(only or set(_ns_dirs(rootfd))):
        st = _namespace_info(rootfd, ns)["namespace_json"]
        if st != "ok":
            ns_notes.append({"ns": ns, "namespace_json": st})
    problems = {"corrupt": bad, "unreadable": unreadable, "orphans": orphans,
                "foreign": _fsck_foreign(rootfd, foreign + tmp_foreign, now, args.tmp_max_age),
                "stale_temp": stale}
    if args.repair:
        _fsck_repair(rootfd, problems)
    for p in bad + orphans + young:
        p.pop("_o", None)
    return {"objs": objs, "valid": valid, "temps": temps, "problems": problems, "young": young,
            "ns_notes": ns_notes}


def cmd_fsck(args: argparse.Namespace) -> int:
    if args.mac_key_file and not args.ns:
        raise UsageError("--mac-key-file needs --ns: MAC keys are per namespace")
    mac_key = _load_mac_key(args.mac_key_file)
    with _open_root(args.root) as rootfd:
        _require_root(rootfd, args.root, mutating=args.repair)
        r = _fsck_scan(args, rootfd, mac_key, time.time())
    problems = r["problems"]
    found = sum(len(v) for v in problems.values())
    left = sum(1 for v in problems.values() for p in v if not p.get("repaired"))
    doc: dict[str, Any] = {
        "root": os.path.abspath(args.root), "checked": len(r["objs"]), "valid": len(r["valid"]),
        "bytes_checked": sum(o.size for o in r["objs"]), "mac": mac_key is not None,
        "repair": args.repair, **problems, "young_orphans": r["young"],
        "active_temp": len(r["temps"]) - len(problems["stale_temp"]),
        "namespace_notes": r["ns_notes"], "problems": found, "unrepaired": left,
        "clean": left == 0}
    _emit(args, doc, _fsck_text)
    return 0 if left == 0 else 1


def _fsck_text(doc: dict[str, Any]) -> str:
    def fix(p: dict[str, Any]) -> str:
        if "repaired" not in p:
            return ""
        return " [removed]" if p["repaired"] else f" [kept: {p.get('repair_error', '')}]"

    lines = [f"corrupt     {p['path']}: {p['reason']}{fix(p)}" for p in doc["corrupt"]]
    lines += [f"unreadable  {p['path']}: {p['reason']}" for p in doc["unreadable"]]
    lines += [f"orphan      {p['path']}: chunk {p['chunk_index']}, parent {p['parent']} is "
              f"absent{fix(p)}" for p in doc["orphans"]]
    lines += [f"foreign     {p['path']} ({p['kind']}){fix(p)}" for p in doc["foreign"]]
    lines += [f"stale temp  {paths.TMP_DIR}/{p['name']}: {human(p['bytes'])}, "
              f"{_age(p['age'])} old{fix(p)}" for p in doc["stale_temp"]]
    lines += [f"note: {p['path']}: parent absent, but younger than --orphan-grace"
              for p in doc["young_orphans"]]
    lines += [f"note: {p['ns']}/{NS_JSON}: {p['namespace_json']}" for p in doc["namespace_notes"]]
    n = _plural(doc["problems"], "problem")
    verdict = ("clean" if doc["problems"] == 0 else
               f"{n}, all repaired" if doc["clean"] else
               f"{n}, {doc['unrepaired']} left" if doc["repair"] else
               f"{n} (run with --repair to fix)")
    lines.append(f"fsck {doc['root']}: {doc['checked']} objects "
                 f"({human(doc['bytes_checked'])}) checked, {doc['valid']} valid: {verdict}")
    return "\n".join(lines)


# -- bench -----------------------------------------------------------------------------------------
_BENCHES = {"io": "yrcache.bench.io_bench", "store": "yrcache.bench.store_bench"}
_BENCH_HELP = """usage: yrcache bench [io|store] [ARGS...]

Runs a benchmark from inside the package; ARGS go to it unchanged (see `yrcache bench io --help`).
  io      the I/O bandwidth benchmark, engine vs fio (yrcache.bench.io_bench; the default)
  store   the object store benchmark (yrcache.bench.store_bench, when installed)
"""


def cmd_bench(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(_BENCH_HELP)
        avail = [k for k, m in _BENCHES.items() if importlib.util.find_spec(m) is not None]
        print(f"available here: {', '.join(avail)}\n\n-- yrcache bench io --help --")
        sys.stdout.flush()
        argv = ["io", "--help"]
    which = "io"
    if argv and argv[0] in _BENCHES:
        which, argv = argv[0], argv[1:]
    mod_name = _BENCHES[which]
    if importlib.util.find_spec(mod_name) is None:
        raise UsageError(f"bench {which}: {mod_name} is not part of this installation")
    mod = importlib.import_module(mod_name)
    rc = mod.main(list(argv))
    return int(rc or 0)


# -- the parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document instead of text")
    p = argparse.ArgumentParser(
        prog=PROG, description="Inspect, check and maintain yrcache cache roots.",
        epilog="Exit status: 0 ok, 1 fsck found problems, 2 bad usage or unusable ROOT.")
    p.add_argument("--json", action="store_true", default=False,
                   help="print one JSON document instead of text")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    s = sub.add_parser("info", parents=[common], help="build, io_uring, O_DIRECT and fs of DIR",
                       description="Version, build (backends, liburing, CUDA, checksum), io_uring "
                       "usability; with DIR: O_DIRECT usability and the file system type.")
    s.add_argument("dir", nargs="?", metavar="DIR")
    s.set_defaults(fn=cmd_info)

    s = sub.add_parser("ls", parents=[common], help="namespaces, or the objects of one",
                       description="Namespaces (model, dtype, layers, objects, bytes); with --ns "
                       "the objects of one namespace.")
    s.add_argument("root", metavar="ROOT")
    s.add_argument("--ns", metavar="HEX", help="list this namespace's objects (a unique prefix "
                   "is enough)")
    s.add_argument("--long", "-l", action="store_true",
                   help="with --ns: header fields (chunk index, tokens, parent, segments)")
    s.set_defaults(fn=cmd_ls)

    s = sub.add_parser("du", parents=[common], help="bytes per namespace, ledger, temp files",
                       description="Bytes and objects per namespace and in total (file sizes, "
                       "as the janitor counts them), the usage ledger and the temp files.")
    s.add_argument("root", metavar="ROOT")
    s.set_defaults(fn=cmd_du)

    s = sub.add_parser("gc", parents=[common], help="one janitor pass now",
                       description="One janitor pass now: reclaim abandoned temp files, evict "
                       "least recently used objects down to the low watermark once usage passes "
                       "the high one, remove orphans. Waits for a pass running elsewhere.")
    s.add_argument("root", metavar="ROOT")
    s.add_argument("--capacity", type=lambda t: 0 if t.lower() == "none" else parse_size(t),
                   metavar="BYTES", help="byte budget of the root (10G, 512M; 'none': no "
                   "eviction); default: the capacity recorded in the ledger, if any")
    s.add_argument("--low", type=_fraction, default=0.85, help="low watermark (default 0.85)")
    s.add_argument("--high", type=_fraction, default=0.95, help="high watermark (default 0.95)")
    s.add_argument("--tmp-max-age", type=_seconds, default=600.0, metavar="S",
                   help="temp files older than this are abandoned (default 600)")
    s.add_argument("--orphan-grace", type=_seconds, default=60.0, metavar="S",
                   help="objects without a parent are kept this long (default 60)")
    s.set_defaults(fn=cmd_gc)

    s = sub.add_parser("fsck", parents=[common], help="verify every object",
                       description="Verify every object (header, size, every segment's checksum; "
                       "MACs with --mac-key-file) and find foreign entries, orphans and stale temp "
                       "files. Exit status 1 when problems are left.")
    s.add_argument("root", metavar="ROOT")
    s.add_argument("--repair", action="store_true",
                   help="remove invalid objects, orphans, stale temp files and foreign files and "
                   "symlinks (foreign directories are only reported)")
    s.add_argument("--mac-key-file", metavar="F",
                   help="the namespace MAC key (16-64 raw bytes, or hex text): objects without a "
                   "valid tag are invalid")
    s.add_argument("--ns", metavar="HEX", help="check only this namespace")
    s.add_argument("--tmp-max-age", type=_seconds, default=600.0, metavar="S",
                   help="temp files older than this are stale (default 600)")
    s.add_argument("--orphan-grace", type=_seconds, default=60.0, metavar="S",
                   help="orphans younger than this may be out-of-order publishes: noted, not "
                   "problems (default 60)")
    s.add_argument("-j", "--jobs", type=_jobs, default=4,
                   help=f"objects checked in parallel (1-{MAX_JOBS}, default 4)")
    s.set_defaults(fn=cmd_fsck)

    sub.add_parser("bench", add_help=False, help="run a benchmark: bench [io|store] [ARGS...]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (never raises SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        i = 0
        while i < len(argv) and argv[i] == "--json":
            i += 1
        if i < len(argv) and argv[i] == "bench":
            return cmd_bench(argv[i + 1:])
        args = build_parser().parse_args(argv)
        return int(args.fn(args))
    except UsageError as e:
        _note(f"error: {e}")
        return 2
    except SystemExit as e:  # argparse (usage errors, --help), or a benchmark's own exit
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BrokenPipeError:  # `yrcache ls ROOT | head`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        _note(f"error: {e}")
        return 2


__all__ = ["build_parser", "fs_type", "human", "main", "parse_size"]
