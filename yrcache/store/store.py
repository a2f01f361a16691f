# SPDX-License-Identifier: Apache-2.0
"""The object store: publish, look up and load self-validating KV objects in a cache root that
many processes on many nodes share (docs/store.md).

- ``put``: segments are written to ``root/.tmp/<unique>.tmp`` through the I/O engine, fsynced, and
  renamed to the object's path (:mod:`yrcache.store.paths`): readers never see a partial object,
  and two writers of one key both succeed (either result is valid: same key, same content).
- ``lookup``: how many leading keys of a chain exist: an in-process index first, then parallel
  fstatat()s of the rest, so a slow shared file system does not stall a scheduler.
- ``get``: reads the header and the chosen segments in one batch, verifies everything (namespace,
  key, geometry, size, checksums, MAC), and reports a *miss* for anything wrong: a vanished
  object (ENOENT/ESTALE: another node evicted it), a corrupt or truncated one (then removed), an
  I/O error. Only bad arguments raise; cache faults never reach the serving loop as exceptions.
- capacity: see :mod:`yrcache.store.janitor`.

Trust model: checksums catch accidents (torn writes, bit rot, truncation, foreign files), not a
malicious writer with write access to the root. For roots shared with writers you do not trust,
give the namespace a ``mac_key``: every header and segment then carries a keyed BLAKE2b tag, and
objects without a valid tag are misses.
"""
from __future__ import annotations

import concurrent.futures
import errno
import itertools
import logging
import math
import numbers
import os
import stat
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import envs
from .._args import check_digest, check_digests, check_int
from .._native import _C
from .._util import prestart
from ..futures import Future
from ..io.engine import MAX_THREADS, IoEngine
from . import check, paths
from .format import (
    MAX_OBJECT_BYTES,
    MAX_SEGMENTS,
    ObjectFormatError,
    check_fields,
    describe,
)
from .janitor import HOST_TAG, Janitor, Usage
from .keys import Namespace
from .reader import FOREIGN_ERRNOS, MISSING_ERRNOS, GetResult, Reader, miss_reason, scratch
from .state import StoreState
from .writer import Writer

logger = logging.getLogger(__name__)


#: errno values of a root that refuses writes: with read_only=None the store opens load-only.
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: bounds of the constructor's pool sizes and open-object cache (each handle is a descriptor)
MAX_HANDLES = 4096
#: durations above this (about 31 years) are mistakes; threading refuses some of them anyway
MAX_SECONDS = 1e9

Buffer = Any  # a buffer-protocol object (bytes-like, numpy array, HostBuffer, memoryview)


def _check_real(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r:.40}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v}")
    return f


def _check_seconds(name: str, v: Any) -> float:
    f = _check_real(name, v)
    if not 0 <= f <= MAX_SECONDS:
        raise ValueError(f"{name} must be in [0, {MAX_SECONDS:g}] seconds, got {v}")
    return f


def _check_fraction(name: str, v: Any) -> float:
    f = _check_real(name, v)
    if not 0 < f <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {v}")
    return f


def _check_options(namespace: Any, engine: Any, *, mac_key: Any, capacity_bytes: Any,
                   durable: Any, read_only: Any, read_cache: Any, watermarks: tuple[Any, Any],
                   seconds: dict[str, Any], threads: dict[str, Any],
                   max_handles: Any) -> tuple[float, float]:
    """Check the Store constructor's arguments (but the root); returns the watermarks as floats
    (low, high)."""
    if not isinstance(namespace, Namespace):
        raise TypeError(f"namespace must be a yrcache.store.keys.Namespace, got "
                        f"{type(namespace).__name__}")
    if engine is not None and not isinstance(engine, IoEngine):
        raise TypeError(f"engine must be a yrcache.IoEngine or None, got "
                        f"{type(engine).__name__}")
    if mac_key is not None:
        if not isinstance(mac_key, bytes):
            raise TypeError(f"mac_key must be bytes, got {type(mac_key).__name__}")
        if not 16 <= len(mac_key) <= 64:
            raise ValueError(f"mac_key must be 16-64 bytes, got {len(mac_key)}")
    if capacity_bytes is not None:
        check_int("capacity_bytes", capacity_bytes, 1)
    for name, flag in (("durable", durable), ("read_only", read_only),
                       ("read_cache", read_cache)):
        optional = name != "durable"
        if not isinstance(flag, bool) and not (optional and flag is None):
            raise TypeError(f"{name} must be a bool{' or None' * optional}, "
                            f"got {type(flag).__name__}")
    low_watermark = _check_fraction("low_watermark", watermarks[0])
    high_watermark = _check_fraction("high_watermark", watermarks[1])
    if low_watermark > high_watermark:
        raise ValueError(f"need 0 < low_watermark <= high_watermark <= 1, got "
                         f"{low_watermark}, {high_watermark}")
    for name, v in seconds.items():
        _check_seconds(name, v)
    for name, v in threads.items():
        check_int(name, v, 1, MAX_THREADS)
    check_int("max_handles", max_handles, 0, MAX_HANDLES)
    return low_watermark, high_watermark


def default_read_cache(network_fs: str, mode: str | None = None) -> bool:
    """Whether a root on ``network_fs`` (see paths.network_fs; "" = local) loads through the page
    cache when Store's read_cache is not given. ``mode``: YRCACHE_READ_CACHE's value (read here
    when None): off, on, or auto = on for network and FUSE file systems."""
    mode = envs.get("YRCACHE_READ_CACHE") if mode is None else mode
    return mode == "on" or (mode == "auto" and bool(network_fs))


def _views(name: str, bufs: Any, *, writable: bool) -> list[memoryview]:
    """Byte views of a sequence of buffers (TypeError for what is not one, ValueError for a
    read-only destination or a non-contiguous buffer)."""
    if isinstance(bufs, (str, bytes, bytearray, memoryview)) or not hasattr(bufs, "__iter__"):
        raise TypeError(f"{name} must be a sequence of buffers (one per segment), got "
                        f"{type(bufs).__name__}")
    out = []
    for i, b in enumerate(bufs):
        try:
            v = memoryview(b)
        except TypeError:
            raise TypeError(f"{name}[{i}] must be a buffer (bytes-like, numpy array, HostBuffer), "
                            f"got {type(b).__name__}") from None
        if not v.c_contiguous:
            raise ValueError(f"{name}[{i}] must be C-contiguous")
        if writable and v.readonly:
            raise ValueError("destination buffers must be writable")
        out.append(v.cast("B") if v.ndim != 1 or v.format != "B" else v)
    return out


class Store:
    """One namespace of one cache root.

    Args:
        root: the cache directory (local or shared file system). Created if missing.
        namespace: a :class:`~yrcache.store.keys.Namespace` (its digest names the directory).
        engine: the I/O engine (one is made if not given, and closed with the store).
        capacity_bytes: byte budget of the whole root (all namespaces); None: unbounded.
        low_watermark / high_watermark: the janitor evicts down to ``low * capacity`` once
            usage passes ``high * capacity``.
        durable: fsync the directory after each rename (survives power loss, costs a round trip).
        mac_key: a secret shared by trusted writers: objects carry keyed tags (see module doc).
        janitor_period: seconds between janitor attempts (0 disables the janitor thread).
        tmp_max_age: temp files older than this are abandoned (crashed writer elsewhere).
        orphan_grace: seconds an object without its parent is kept (out-of-order publishes).
        touch_interval: a hit refreshes an object's mtime (its LRU age) at most this often.
        index_ttl: seconds an in-process "exists" answer is trusted before asking the FS again.
        handle_ttl / max_handles: a verified object stays open this long (LRU of this many), so
            layer-by-layer loads of one chunk open it and check its header once. An object evicted
            meanwhile is still read whole and valid through the open descriptor.
        lookup_threads / load_threads / store_threads: parallelism of each path. Loads and stores
            run on separate pools so loads never queue behind stores.
        read_cache: loads read through the kernel page cache instead of O_DIRECT. None: from
            ``YRCACHE_READ_CACHE`` (off; on; auto = on where the root is on a network or FUSE
            file system). On a shared file system the client's page cache is the node's cache of
            the store, for every process on the node: an object read again (a shared system
            prompt) costs no round trip and no FUSE daemon CPU. The price, on MooseFS: a first
            read through FUSE's page cache moves bulk loads at ~0.6x of O_DIRECT's bandwidth.
            Every read is verified either way; stores write with O_DIRECT where the FS allows.
    """


    def __init__(self, root: str | os.PathLike[str], namespace: Namespace, *,
                 engine: IoEngine | None = None, capacity_bytes: int | None = None,
                 low_watermark: float = 0.85, high_watermark: float = 0.95,
                 durable: bool = False, mac_key: bytes | None = None,
                 janitor_period: float = 30.0, tmp_max_age: float = 600.0,
                 orphan_grace: float = 60.0, touch_interval: float = 60.0,
                 index_ttl: float = 10.0, handle_ttl: float = 2.0, max_handles: int = 64,
                 lookup_threads: int = 16, load_threads: int = 8, store_threads: int = 4,
                 read_only: bool | None = None, read_cache: bool | None = None) -> None:
        root = paths.check_root(root)
        low_watermark, high_watermark = _check_options(
            namespace, engine, mac_key=mac_key, capacity_bytes=capacity_bytes, durable=durable,
            read_only=read_only, read_cache=read_cache, watermarks=(low_watermark, high_watermark),
            seconds={"janitor_period": janitor_period, "tmp_max_age": tmp_max_age,
                     "orphan_grace": orphan_grace, "touch_interval": touch_interval,
                     "index_ttl": index_ttl, "handle_ttl": handle_ttl},
            threads={"lookup_threads": lookup_threads, "load_threads": load_threads,
                     "store_threads": store_threads}, max_handles=max_handles)
        self.root = root
        self.namespace = namespace
        self.ns = namespace.digest
        self.ns_hex = self.ns.hex()
        self.durable = durable
        self.capacity_bytes = capacity_bytes
        self._state = StoreState(root, self.ns, mac_key=mac_key, durable=durable,
                                 capacity_bytes=capacity_bytes, index_ttl=index_ttl,
                                 touch_interval=touch_interval, logger=logger)
        mode = envs.get("YRCACHE_READ_CACHE")   # before _open: a bad value leaves no fd open
        self._open(read_only)
        #: the network or FUSE file system the root is on ("": local)
        self.network_fs = paths.network_fs(self._state.rootfd)
        #: whether loads read through the page cache (see read_cache above)
        self.read_cache = read_cache if read_cache is not None else \
            default_read_cache(self.network_fs, mode)
        self._own_engine = engine is None
        self.engine = engine or IoEngine()
        self._reader = Reader(self._state, self.engine, handle_ttl=handle_ttl,
                              max_handles=max_handles, direct=not self.read_cache)
        self._state.retire_handle = self._reader.retire
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._start_pools(lookup_threads, load_threads, store_threads)
        self.janitor = Janitor(self._state.rootfd, capacity=capacity_bytes,
                               low_watermark=low_watermark, high_watermark=high_watermark,
                               tmp_max_age=tmp_max_age, orphan_grace=orphan_grace,
                               on_evict=self._forget_hex, read_only=self.read_only)
        self.usage = Usage(self.janitor.metafd, capacity_bytes, high_watermark=high_watermark)
        self._writer = Writer(self._state, self.engine, self.usage)
        self._state.bump("tmp_reclaimed", self.janitor.reclaim_tmp())
        self._janitor_stop = threading.Event()
        self._janitor_thread: threading.Thread | None = None
        if janitor_period > 0 and not self.read_only:
            self._janitor_thread = threading.Thread(target=self._janitor_loop,
                                                    args=(janitor_period,), daemon=True,
                                                    name="yrcache-janitor")
            self._janitor_thread.start()

    def _open(self, read_only: bool | None) -> None:
        """Open the root and, unless load-only, the namespace and temp directories (closing
        what was opened when that fails)."""
        st = self._state
        try:
            st.rootfd = st.keep_fd(paths.open_root(self.root, create=read_only is not True))
            st.ro_reason = "read_only=True" if read_only else ""
            if not read_only:
                st.ro_reason = self._open_writable(probe=read_only is None)
            if st.ro_reason:
                self._open_read_only()
        except BaseException:
            st.close_fds()
            raise

    def _start_pools(self, lookup_threads: int, load_threads: int, store_threads: int) -> None:
        st = self._state
        st.stat_batch = _C.store.StatBatch(lookup_threads)
        # Warm the lookup path once (threads parked, code paved): a scheduler's first lookup
        # should cost what every later one does. 64 random keys: misses, about 0.1 ms locally.
        st.stat_batch.run_keys(st.nsfd if st.nsfd is not None else st.rootfd,
                               os.urandom(16 * 64), False)
        self._loads = ThreadPoolExecutor(load_threads, thread_name_prefix="yrcache-load")
        self._stores = ThreadPoolExecutor(store_threads, thread_name_prefix="yrcache-store")
        for pool in (self._loads, self._stores):  # start a thread now, not in the first call
            pool.submit(int)

    def warm_up(self) -> None:
        """Start every load and store thread now (one of each is started at open)."""
        self._check_open()
        prestart(self._loads)
        prestart(self._stores)

    def _open_writable(self, *, probe: bool) -> str:
        """Open (creating) the namespace and temp directories and check that the root takes
        writes. Returns "" when it does; with ``probe`` (auto-detection), why it does not when the
        file system refuses writes (read-only, permissions): the store then opens load-only. Any
        other failure raises an OSError naming the root."""
        st = self._state
        what = f"creating {self.ns_hex}/"
        try:
            st.nsfd = st.keep_fd(paths.open_dir(st.rootfd, self.ns_hex, create=True))
            what = f"creating {paths.TMP_DIR}/"
            st.tmpfd = st.keep_fd(paths.open_dir(st.rootfd, paths.TMP_DIR, create=True))
            what = f"creating {paths.META_DIR}/"
            os.close(paths.open_dir(st.rootfd, paths.META_DIR, create=True))
            # Existing directories open without a write: create (and remove) a file to know
            # whether publishing can work here (a read-only mount, a root owned by someone else).
            what = f"writing in {paths.TMP_DIR}/"
            name = f"{HOST_TAG}-{os.getpid()}-probe-{os.urandom(4).hex()}{paths.TMP_SUFFIX}"
            os.close(paths.open_beneath(st.tmpfd, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                        paths.FILE_MODE))
            os.unlink(name, dir_fd=st.tmpfd)
        except OSError as e:
            if what.startswith("writing") and e.errno in (errno.ENOSPC, errno.EDQUOT):
                # A full root is still a writable one: puts fail with a counter until the
                # janitor frees space, and loads go on (refusing it would stop both).
                st.log_once("full", "open", "yrcache: cache root %s is full (%s); stores "
                            "fail until space is freed", self.root, e.strerror)
            elif probe and e.errno in READ_ONLY_ERRNOS:
                st.close_fds(keep=1)  # keep the root's descriptor only
                st.nsfd = None
                return f"{e.strerror} ({what})"
            else:
                raise paths.root_error(e.errno or errno.EIO, f"is not usable: {what} failed "
                                   f"({e.strerror or e})", self.root) from None
        self._write_namespace_json()
        return ""

    def _open_read_only(self) -> None:
        """Load-only: nothing is created; an absent namespace directory is opened when it
        appears (another node publishes into it later), meanwhile every lookup is a miss."""
        self._state.tmpfd = -1
        self._state.ns_dir()
        if self._state.ro_reason != "read_only=True":
            logger.warning("yrcache: cache root %s is load-only here (%s): lookups and loads work, "
                           "stores are dropped, nothing is evicted or removed", self.root,
                           self._state.ro_reason)

    @property
    def handle_ttl(self) -> float:
        """Seconds a verified object stays open (see the constructor)."""
        return self._reader.handle_ttl

    @handle_ttl.setter
    def handle_ttl(self, seconds: float) -> None:
        self._reader.handle_ttl = seconds

    @property
    def read_only(self) -> bool:
        """True when this store never writes: ``read_only=True``, or a root auto-detected as not
        writable (read-only file system, no write permission). Loads work; puts return False
        (``dropped_read_only``); the janitor, touches and removals of bad objects are off."""
        return self._state.read_only

    @property
    def index_ttl(self) -> float:
        """Seconds an in-process "exists" answer is trusted (see the constructor)."""
        return self._state.index_ttl

    @index_ttl.setter
    def index_ttl(self, seconds: float) -> None:
        self._state.index_ttl = seconds

    @property
    def touch_interval(self) -> float:
        """A hit refreshes an object's mtime at most this often (see the constructor)."""
        return self._state.touch_interval

    @touch_interval.setter
    def touch_interval(self, seconds: float) -> None:
        self._state.touch_interval = seconds

    # -- public API -----------------------------------------------------------------------------
    def path_of(self, key: bytes) -> str:
        """Absolute path of an object (for tools; I/O goes through descriptors)."""
        return os.path.join(self.root, paths.object_path(self.ns_hex,
                                                         check_digest("key", key).hex()))

    def put(self, key: bytes, segments: Sequence[Buffer], *, parent: bytes, chunk_index: int,
            token_count: int, dtype: str, shape: Sequence[int] = (),
            dedup: bool = True) -> Future[bool]:
        """Publish one object (one segment per layer) in the background. The Future's result is
        True when the object is (now, or already was) published, False when the store was dropped
        (root full, I/O error: counted in stats). Segment buffers must stay unchanged until then;
        4 KiB-aligned buffers whose lengths are multiples of 4 KiB take the O_DIRECT path."""
        self._check_open()
        key = check_digest("key", key)
        parent = check_digest("parent", parent)
        if not isinstance(dedup, bool):
            raise TypeError(f"dedup must be a bool, got {type(dedup).__name__}")
        views = _views("segments", segments, writable=False)
        if not views:
            raise ValueError("an object needs at least one segment")
        shape = check_fields(chunk_index=chunk_index, token_count=token_count, dtype=dtype,
                             shape=shape, lengths=[v.nbytes for v in views])
        fut: Future[bool] = Future(what="put")
        if self.read_only:  # a load-only root: the cache skips the write, as when it is full
            self._state.bump("dropped_read_only")
            self._state.log_once("read-only", "root", "yrcache: cache root %s is load-only (%s): "
                                 "dropping stores", self.root, self._state.ro_reason)
            fut.set_result(False)
            return fut
        self._submit(self._stores, self._run, fut, self._writer.put, key, views, parent,
                     chunk_index, token_count, dtype, shape, dedup)
        return fut

    def get(self, key: bytes, bufs: Sequence[Buffer], *, layers: Sequence[int] | None = None,
            lengths: Sequence[int] | None = None,
            byte_range: tuple[int, int] | None = None) -> Future[GetResult]:
        """Load segments of one object into ``bufs`` in the background; the Future's result is a
        :class:`GetResult` (falsy on a miss). ``layers`` picks segments (default: all, one buffer
        each). With ``lengths`` (every segment's length, known from the namespace's layout) the
        header and segments are read in one round trip; without, the header is read first.
        ``byte_range=(start, n)`` loads bytes [start, start+n) of each chosen segment (a token
        range inside a chunk): the whole segment is read and verified, then the range copied."""
        self._check_open()
        key = check_digest("key", key)
        views = _views("bufs", bufs, writable=True)
        if layers is not None:
            layers = [check_int(f"layers[{j}]", i, 0, MAX_SEGMENTS - 1)
                      for j, i in enumerate(_seq("layers", layers))]
            if len(layers) != len(views):
                raise ValueError(f"{len(layers)} layers but {len(views)} buffers")
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers must be distinct non-negative ints, got {layers}")
            if any(i >= self.namespace.num_layers for i in layers):
                raise ValueError(f"layers {layers} out of range: the namespace has "
                                 f"{self.namespace.num_layers} layers")
        if byte_range is not None:
            br = _seq("byte_range", byte_range)
            if len(br) != 2:
                raise ValueError(f"byte_range must be (start, n), got {byte_range!r:.60}")
            byte_range = (check_int("byte_range start", br[0], 0, MAX_OBJECT_BYTES),
                          check_int("byte_range n", br[1], 1, MAX_OBJECT_BYTES))
            n = byte_range[1]
            if any(v.nbytes != n for v in views):
                raise ValueError(f"with byte_range each buffer must be {n} bytes")
        if lengths is not None:
            lengths = [check_int(f"lengths[{j}]", n, 0, MAX_OBJECT_BYTES)
                       for j, n in enumerate(_seq("lengths", lengths))]
            if not 1 <= len(lengths) <= MAX_SEGMENTS:
                raise ValueError(f"an object holds 1-{MAX_SEGMENTS} segments, got "
                                 f"{len(lengths)} lengths")
            idx = layers if layers is not None else list(range(len(views)))
            if layers is None and len(views) != len(lengths):
                raise ValueError(f"{len(views)} buffers for {len(lengths)} segments")
            if any(i >= len(lengths) for i in idx):
                raise ValueError("layer index out of range of lengths")
            if byte_range is None:
                for i, v in zip(idx, views):
                    if v.nbytes != lengths[i]:
                        raise ValueError(f"buffer for segment {i} is {v.nbytes} bytes, the segment "
                                         f"is {lengths[i]}")
            elif any(byte_range[0] + byte_range[1] > lengths[i] for i in idx):
                raise ValueError(f"byte_range {byte_range} exceeds a segment")
        fut: Future[GetResult] = Future(what="get")
        self._submit(self._loads, self._run, fut, self._reader.get, key, views, layers, lengths,
                     byte_range)
        return fut

    def lookup(self, keys: Sequence[bytes]) -> int:
        """How many leading keys of this chain exist. Never raises for file-system trouble (an
        unreachable root answers 0). Hits refresh the matched objects' LRU age in the background."""
        self._check_open()
        keys = check_digests("keys", keys)
        st = self._state
        st.bump("lookups")
        st.bump("lookup_keys", len(keys))
        now = time.monotonic()
        n = st.indexed_prefix(keys, now)
        nsfd = st.ns_dir() if n < len(keys) else None
        if nsfd is not None:
            found = self._search(nsfd, keys[n:])
            st.index_found(keys[n:n + found], now)
            n += found
        if n:
            self._touch_chain(keys[:n])
        return n

    def _exist(self, nsfd: int, keys: Sequence[bytes], prefix_only: bool) -> list[bool]:
        """One round of existence checks, in parallel (the lookup threads)."""
        st = self._state
        st.bump("lookup_rounds")
        st.bump("lookup_stats", len(keys))
        out = []
        for r in st.stat_batch.run_keys(nsfd, b"".join(keys), prefix_only):
            if r < 0 and -r not in MISSING_ERRNOS | FOREIGN_ERRNOS and -r != errno.ECANCELED:
                st.count_error(-r, "lookup")
            out.append(r >= 0)
        return out

    def _search(self, nsfd: int, keys: Sequence[bytes]) -> int:
        """Length of the stored prefix of chain ``keys``, in O(log n) rounds of parallel checks.

        Stored chains are prefix-closed (stores publish prefixes, the janitor evicts chain tails
        first), so existence is monotone along a chain: probe at offsets 2^k - 1 in one round,
        then split the bracket between the last present and the first missing probe into as many
        parts as there are lookup threads, round after round. A chain no longer than that is
        checked whole in one round. A hole (a corrupt object removed) can make the answer longer
        than the stored prefix: the load verifies every object and a missing one is a partial hit
        (recomputed), never wrong KV."""
        width = max(2, self._state.stat_batch.threads)
        lo, hi = 0, len(keys)   # keys[:lo] known present, keys[hi:] past a known-missing one
        if hi > width:
            probes = [(1 << k) - 1 for k in range(hi.bit_length()) if (1 << k) - 1 < hi]
            lo, hi = self._narrow(nsfd, keys, probes, lo, hi)
        while hi - lo > width:
            step = (hi - lo) / (width + 1)
            probes = sorted({lo + int(step * (i + 1)) for i in range(width)})
            lo, hi = self._narrow(nsfd, keys, probes, lo, hi)
        if hi > lo:
            lo += sum(itertools.takewhile(bool, self._exist(nsfd, keys[lo:hi], True)))
        return lo

    def _narrow(self, nsfd: int, keys: Sequence[bytes], probes: list[int], lo: int,
                hi: int) -> tuple[int, int]:
        for i, ok in zip(probes, self._exist(nsfd, [keys[i] for i in probes], False)):
            if not ok:
                return lo, i
            lo = i + 1
        return lo, hi

    def lookup_async(self, keys: Sequence[bytes]) -> Future[int]:
        """:meth:`lookup` on the load pool: a scheduler can poll ``done()`` and ask again later."""
        self._check_open()
        keys = check_digests("keys", keys)  # bad keys raise here, not on the Future
        fut: Future[int] = Future(what="lookup")
        self._submit(self._loads, self._run, fut, self.lookup, keys)
        return fut

    def exists(self, key: bytes) -> bool:
        """Whether the object is known to exist (in-process index, else one fstatat); no LRU
        touch. For dedup decisions."""
        self._check_open()
        return self._state.exists(check_digest("key", key))

    def contains(self, key: bytes) -> bool:
        return self.lookup([key]) == 1

    def delete(self, key: bytes) -> bool:
        """Remove an object (tools and tests); True if it existed. On a load-only store nothing
        is removed: False."""
        self._check_open()
        key = check_digest("key", key)
        self._state.forget(key)
        nsfd = self._state.ns_dir()
        if self.read_only or nsfd is None:
            return False
        try:
            shard, name = paths.object_location(key.hex())
            with paths.opened_dir(nsfd, shard) as d:
                os.unlink(name, dir_fd=d)
            return True
        except OSError as e:
            if e.errno in MISSING_ERRNOS:
                return False
            raise

    def read_header(self, key: bytes) -> Any:
        """The parsed, validated header of an object (raises ObjectFormatError / OSError)."""
        self._check_open()
        key = check_digest("key", key)
        fd = self._open_object_fd(key)
        try:
            return check.read_header(fd, ns=self.ns, key=key, mac_key=self._state.mac)
        finally:
            os.close(fd)

    def verify(self, key: bytes) -> GetResult:
        """Read and verify a whole object (for tools: no stats counted, nothing removed)."""
        key = check_digest("key", key)
        try:
            h = self.read_header(key)
        except (OSError, ObjectFormatError) as e:
            return GetResult(False, key, miss_reason(e))
        views = [scratch(h.segment(i)[1]) for i in range(h.segment_count)]
        return self._reader.get(key, views, None, None, None, remove_bad=False, count=False)

    def run_janitor(self, *, blocking: bool = True) -> Any:
        """Run a janitor pass now (``gc``); returns its JanitorReport (``ran`` False on a load-only
        store, or while another process runs one and ``blocking`` is False)."""
        self._check_open()
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be a bool, got {type(blocking).__name__}")
        self.usage.flush()
        rep = self.janitor.run_once(blocking=blocking)
        if rep.ran:
            self._record_janitor(rep)
        return rep

    def stats(self) -> dict[str, Any]:
        d = self._state.snapshot()
        d["usage_estimate_bytes"] = self.usage.estimate() if self.capacity_bytes else None
        d["capacity_bytes"] = self.capacity_bytes
        d["index_entries"] = len(self._state.index)
        return d

    def flush(self) -> None:
        """Wait for every put, get and background touch submitted so far (does not close)."""
        with self._state.lock:
            pending = list(self._inflight)
        concurrent.futures.wait(pending)
        self.usage.flush()

    def close(self) -> None:
        """Finish submitted work, stop the janitor, release descriptors (and an owned engine)."""
        if self._state.closed:
            return
        self._state.closed = True
        self._janitor_stop.set()
        self._state.janitor_wake.set()
        self._stores.shutdown(wait=True)
        self._loads.shutdown(wait=True)
        self._reader.retire_all()
        if self._janitor_thread is not None:
            self._janitor_thread.join()
        for step in (self.usage.flush, self.usage.close, self.janitor.close, self._stat_close,
                     self.engine.close if self._own_engine else None):
            if step is None:
                continue
            try:
                step()
            except Exception as e:  # noqa: BLE001 - close releases everything it can
                logger.warning("yrcache: while closing the store: %s", e)
        self._state.close_fds()

    def _stat_close(self) -> None:
        self._state.stat_batch = None  # joins the lookup threads

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        closed = " closed" if self._state.closed else ""
        return f"<yrcache.Store {self.root!r} ns={self.ns_hex[:12]}{closed}>"

    # -- helpers ----------------------------------------------------------------------------------
    def _submit(self, pool: ThreadPoolExecutor, fn: Any, *args: Any) -> None:
        f = pool.submit(fn, *args)
        with self._state.lock:
            self._inflight.add(f)
        f.add_done_callback(self._inflight_done)

    def _inflight_done(self, f: concurrent.futures.Future[Any]) -> None:
        with self._state.lock:
            self._inflight.discard(f)

    def _run(self, fut: Future[Any], fn: Any, *args: Any) -> None:
        try:
            r = fn(*args)
        except BaseException as e:  # bad arguments found late, or a bug: surface on the Future
            fut.set_exception(e)
        else:
            fut.set_result(r)

    def _open_object_fd(self, key: bytes) -> int:
        nsfd = self._state.ns_dir()
        if nsfd is None:
            raise FileNotFoundError(errno.ENOENT, "no such namespace directory (yet)", self.ns_hex)
        return paths.open_beneath(nsfd, paths.object_relpath(key.hex()), os.O_RDONLY)

    def _touch_chain(self, keys: list[bytes]) -> None:
        """Refresh mtimes (LRU age) of a matched chain, rate-limited per key, in the background."""
        if self.read_only:  # mtimes are the janitor's LRU ages: a load-only store leaves them
            return
        due = self._state.touch_due(keys, time.monotonic())
        if due and not self._state.closed:
            try:
                self._submit(self._stores, self._touch, due)
            except RuntimeError:  # shutting down
                pass

    def _touch(self, keys: list[bytes]) -> None:
        self._state.bump("touches", _C.store.touch_keys(self._state.nsfd, b"".join(keys)))

    def _janitor_loop(self, period: float) -> None:
        while not self._janitor_stop.is_set():
            self._state.janitor_wake.wait(period)
            self._state.janitor_wake.clear()
            if self._janitor_stop.is_set():
                return
            try:
                self.usage.flush()
                rep = self.janitor.run_once(blocking=False)
                if rep.ran:
                    self._record_janitor(rep)
            except Exception as e:  # noqa: BLE001 - the janitor must never die
                self._state.log_once("janitor", type(e).__name__,
                                     "yrcache: janitor pass failed: %s", e)

    def _record_janitor(self, rep: Any) -> None:
        st = self._state
        with st.lock:
            st.counters["evictions"] += rep.evicted
            st.counters["orphans_removed"] += rep.orphans
            st.counters["tmp_reclaimed"] += rep.tmp_reclaimed
        self.usage.refresh()

    def _forget_hex(self, ns_hex: str, key_hex: str) -> None:
        if ns_hex == self.ns_hex:
            self._state.forget(bytes.fromhex(key_hex))

    def _write_namespace_json(self) -> None:
        """Write ``namespace.json`` (for people and fsck) unless a regular file is there. Anything
        else in its place (a planted symlink, a FIFO) is replaced by an atomic rename, which
        replaces the entry itself and never follows it. Failures are logged, not raised: objects
        never depend on this file."""
        name = "namespace.json"
        nsfd, log_once = self._state.nsfd, self._state.log_once
        try:
            st = os.stat(name, dir_fd=nsfd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                return
            replacing = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        except FileNotFoundError:
            replacing = ""
        except OSError as e:
            log_once("nsjson", "stat", "yrcache: cannot check %s/%s/%s: %s", self.root,
                     self.ns_hex, name, e)
            return
        tmp = f".namespace.{HOST_TAG}.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            check.write_then_rename(nsfd, name, self.namespace.to_json().encode(), tmp,
                                    fsync=True)
        except OSError as e:  # e.g. a full root, or a directory planted in its place
            log_once("nsjson", "write", "yrcache: cannot write %s/%s/%s: %s", self.root,
                     self.ns_hex, name, e)
            return
        if replacing:
            logger.warning("yrcache: %s/%s/%s was %s; replaced by the namespace's fields",
                           self.root, self.ns_hex, name, replacing)

    def _check_open(self) -> None:
        if self._state.closed:
            raise _C.ClosedError("store is closed")


def _seq(name: str, v: Any) -> list[Any]:
    if isinstance(v, (str, bytes, bytearray)) or not hasattr(v, "__iter__"):
        raise TypeError(f"{name} must be a sequence of ints, got {type(v).__name__}")
    return list(v)


__all__ = ["MISSING_ERRNOS", "GetResult", "Store", "describe"]
