# SPDX-License-Identifier: Apache-2.0
"""Read-only commands: ``info`` (build, io_uring, O_DIRECT and file system of a directory),
``ls`` (namespaces, or the objects of one) and ``du`` (bytes per namespace, ledger, temp files).
They never change the root."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from typing import Any

from ..store import check, paths
from ..store.format import ObjectFormatError, describe
from . import output, root


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
        raise output.UsageError(f"{d}: no such directory")
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

    output.emit(args, doc, text)
    return 0


def _ns_rows(rootfd: int, objs: dict[str, list[paths.ObjectEntry]]) -> list[dict[str, Any]]:
    rows = []
    for ns in sorted(set(root.ns_dirs(rootfd)) | set(objs)):
        info = root.namespace_info(rootfd, ns)
        lst = objs.get(ns, [])
        rows.append({"ns": ns, **info, "objects": len(lst), "bytes": sum(o.size for o in lst)})
    return rows


def cmd_ls(args: argparse.Namespace) -> int:
    with root.open_root(args.root) as rootfd:
        root.require_root(rootfd, args.root, mutating=False)
        if args.ns is None:
            rows = _ns_rows(rootfd, root.scan(rootfd))
            doc: dict[str, Any] = {"root": os.path.abspath(args.root), "namespaces": rows,
                                   "objects": sum(r["objects"] for r in rows),
                                   "bytes": sum(r["bytes"] for r in rows)}

            def text(doc: dict[str, Any]) -> str:
                t = output.table(["NAMESPACE", "MODEL", "DTYPE", "LAYERS", "OBJECTS", "BYTES"],
                           [[r["ns"], r["model"] or "?", r["dtype"] or "?",
                             r["num_layers"] if r["num_layers"] is not None else "?",
                             r["objects"], output.human(r["bytes"])] for r in doc["namespaces"]],
                           right={3, 4, 5})
                return (f"{t}\n{output.plural(len(doc['namespaces']), 'namespace')}, "
                        f"{output.plural(doc['objects'], 'object')}, {output.human(doc['bytes'])}")
            output.emit(args, doc, text)
            return 0

        ns = root.resolve_ns(rootfd, args.ns)
        lst = sorted(root.scan(rootfd, {ns}).get(ns, []), key=lambda o: o.key_hex)
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
        doc = {"root": os.path.abspath(args.root), "ns": ns, **root.namespace_info(rootfd, ns),
               "objects": items, "count": len(items), "bytes": sum(i["bytes"] for i in items)}

        def text(doc: dict[str, Any]) -> str:
            head = ["KEY", "SIZE", "MTIME"]
            if args.long:
                head += ["CHUNK", "TOKENS", "PARENT", "SEGMENTS"]
            rows = []
            for i in doc["objects"]:
                r = [i["key"], output.human(i["bytes"]), output.when(i["mtime"])]
                if args.long:
                    h = i.get("header")
                    r += ([h["chunk_index"], h["tokens"], h["parent"], h["segments"]] if h
                          else ["!", "", f"invalid: {i.get('error')}", ""])
                rows.append(r)
            t = output.table(head, rows, right={1, 3, 4, 6})
            what = f"{doc['model'] or '?'} {doc['dtype'] or '?'} layers {doc['num_layers'] or '?'}"
            return (f"{doc['ns']} ({what})\n{t}\n{doc['count']} objects, "
                    f"{output.human(doc['bytes'])}")
        output.emit(args, doc, text)
    return 0


def cmd_du(args: argparse.Namespace) -> int:
    with root.open_root(args.root) as rootfd:
        root.require_root(rootfd, args.root, mutating=False)
        foreign: list[paths.Foreign] = []
        objs = root.scan(rootfd, foreign=foreign)
        temps, tmp_foreign = root.tmp_entries(rootfd)
        rows = [{"ns": r["ns"], "model": r["model"], "objects": r["objects"], "bytes": r["bytes"]}
                for r in _ns_rows(rootfd, objs)]
        total = {"objects": sum(r["objects"] for r in rows), "bytes": sum(r["bytes"] for r in rows)}
        tmp = {"files": len(temps), "bytes": sum(t["bytes"] for t in temps)}
        doc: dict[str, Any] = {"root": os.path.abspath(args.root), "namespaces": rows,
                               "total": total, "ledger": root.ledger(rootfd), "tmp": tmp,
                               "foreign": len(foreign) + len(tmp_foreign)}

    def text(doc: dict[str, Any]) -> str:
        t = output.table(["NAMESPACE", "MODEL", "OBJECTS", "BYTES"],
                   [[r["ns"], r["model"] or "?", r["objects"], output.human(r["bytes"])]
                    for r in doc["namespaces"]] +
                   [["total", "", doc["total"]["objects"], output.human(doc["total"]["bytes"])]],
                   right={2, 3})
        lines = [t]
        led = doc["ledger"]
        if led is None:
            lines.append("ledger: none (no janitor pass or store flush yet)")
        elif "error" in led:
            lines.append(f"ledger: unreadable ({led['error']})")
        else:
            cap = led.get("capacity")
            s = f"ledger: {output.human(led.get('bytes', 0))}"
            if cap:
                s += f" of {output.human(cap)} ({100 * led.get('bytes', 0) / cap:.0f}%)"
            if led.get("scanned_at"):
                ago = output.age(time.time() - led["scanned_at"])
                s += (f", scanned {output.when(led['scanned_at'])} ({ago} ago) by "
                      f"{led.get('scanned_by', '?')}")
            else:
                s += ", never scanned by a janitor"
            lines.append(s)
        lines.append(f"temp files: {doc['tmp']['files']} ({output.human(doc['tmp']['bytes'])})")
        if doc["foreign"]:
            lines.append(f"foreign entries: {doc['foreign']} (see fsck)")
        return "\n".join(lines)

    output.emit(args, doc, text)
    return 0


__all__ = ["cmd_du", "cmd_info", "cmd_ls", "fs_type"]
