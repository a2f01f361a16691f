# SPDX-License-Identifier: Apache-2.0
"""Commands that check and maintain a root: ``gc`` (one janitor pass now) and ``fsck`` (verify
every object as the store's loads do, find orphans, foreign entries and stale temp files; remove
them with ``--repair``, each only while it is the entry that was judged)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..io.engine import IoEngine
from ..store import check, paths
from ..store.format import ObjectFormatError
from ..store.reader import verify_file
from . import output, root


def cmd_gc(args: argparse.Namespace) -> int:
    from ..store.janitor import Janitor
    if args.low > args.high:
        raise output.UsageError(f"--low ({args.low}) must not exceed --high ({args.high})")
    with root.open_root(args.root) as rootfd:
        root.require_root(rootfd, args.root, mutating=True)
        cap, source = args.capacity, "--capacity"
        if cap is None:
            led = root.ledger(rootfd) or {}
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
            raise output.UsageError(f"{args.root}: cannot run the janitor here: "
                             f"{e.strerror or e}") from None
    doc: dict[str, Any] = {"root": os.path.abspath(args.root), "capacity": cap,
                           "capacity_from": source, "low_watermark": args.low,
                           "high_watermark": args.high, "tmp_max_age": args.tmp_max_age,
                           "orphan_grace": args.orphan_grace, **dataclasses.asdict(rep)}

    def text(doc: dict[str, Any]) -> str:
        if doc["capacity"]:
            c = doc["capacity"]
            head = (f"capacity {output.human(c)} (from {doc['capacity_from']}): above "
                    f"{output.human(c * doc['high_watermark'])} evict down to "
                    f"{output.human(c * doc['low_watermark'])}")
        else:
            head = "no capacity (pass --capacity): temp files and orphans only"
        return "\n".join([
            f"gc {doc['root']}: {head}",
            (f"  evicted {doc['evicted']} objects ({output.human(doc['evicted_bytes'])}), orphans "
             f"{doc['orphans']}, invalid {doc['corrupt']}, temp files {doc['tmp_reclaimed']}"),
            (f"  now {output.plural(doc['objects'], 'object')}, {output.human(doc['bytes'])} in "
             f"{output.plural(len(doc['by_namespace']), 'namespace')} ({doc['seconds']:.2f} s)")])

    output.emit(args, doc, text)
    return 0


def _load_mac_key(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        # O_NONBLOCK: a FIFO given by mistake must not hang the command; only files are keys
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise output.UsageError(f"--mac-key-file {path}: not a regular file")
            raw = os.read(fd, 4096)
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        why = getattr(e, "strerror", None) or e
        raise output.UsageError(f"--mac-key-file {path!r}: {why}") from None
    s = raw.strip()
    key = raw
    if 32 <= len(s) <= 128 and len(s) % 2 == 0:
        try:
            key = bytes.fromhex(s.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            key = raw
    if not 16 <= len(key) <= 64:
        raise output.UsageError(
            f"--mac-key-file {path}: a MAC key is 16-64 bytes (raw, or as hex), got {len(key)}")
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
        note(p, root.unlink_at(rootfd, p["path"], ino=p.pop("_o").ino))
    for p in problems["foreign"]:
        if p["kind"] == "dir":
            note(p, "a directory: not removed (inspect it by hand)")
        else:
            note(p, root.unlink_at(rootfd, p["path"]))
    for p in problems["stale_temp"]:
        note(p, root.unlink_at(rootfd, f"{paths.TMP_DIR}/{p['name']}"))


def _fsck_scan(args: argparse.Namespace, rootfd: int, mac_key: bytes | None, now: float
               ) -> dict[str, Any]:
    only = {root.resolve_ns(rootfd, args.ns)} if args.ns else None
    foreign: list[paths.Foreign] = []
    objs = [o for lst in root.scan(rootfd, only, foreign).values() for o in lst]
    if only is not None:  # entries outside the chosen namespace are not ours to judge
        foreign = [f for f in foreign if f.relpath.split("/", 1)[0] in only]
    temps, tmp_foreign = ([], []) if only is not None else root.tmp_entries(rootfd)
    bad, unreadable, valid = _fsck_objects(args, rootfd, objs, mac_key)
    orphans, young = _fsck_orphans(valid, now, args.orphan_grace)
    stale = [dict(t, age=now - t["mtime"]) for t in temps if now - t["mtime"] > args.tmp_max_age]
    ns_notes = []
    for ns in sorted(only or set(root.ns_dirs(rootfd))):
        st = root.namespace_info(rootfd, ns)["namespace_json"]
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
        raise output.UsageError("--mac-key-file needs --ns: MAC keys are per namespace")
    mac_key = _load_mac_key(args.mac_key_file)
    with root.open_root(args.root) as rootfd:
        root.require_root(rootfd, args.root, mutating=args.repair)
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
    output.emit(args, doc, _fsck_text)
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
    lines += [f"stale temp  {paths.TMP_DIR}/{p['name']}: {output.human(p['bytes'])}, "
              f"{output.age(p['age'])} old{fix(p)}" for p in doc["stale_temp"]]
    lines += [f"note: {p['path']}: parent absent, but younger than --orphan-grace"
              for p in doc["young_orphans"]]
    lines += [f"note: {p['ns']}/{root.NS_JSON}: {p['namespace_json']}"
              for p in doc["namespace_notes"]]
    n = output.plural(doc["problems"], "problem")
    verdict = ("clean" if doc["problems"] == 0 else
               f"{n}, all repaired" if doc["clean"] else
               f"{n}, {doc['unrepaired']} left" if doc["repair"] else
               f"{n} (run with --repair to fix)")
    lines.append(f"fsck {doc['root']}: {doc['checked']} objects "
                 f"({output.human(doc['bytes_checked'])}) checked, {doc['valid']} valid: {verdict}")
    return "\n".join(lines)


__all__ = ["cmd_fsck", "cmd_gc"]
