# SPDX-License-Identifier: Apache-2.0
"""The store's publish path: build the header, admit the object against the root's budget, write
it to ``root/.tmp/<unique>.tmp`` through the I/O engine, fsync, and rename it to its object path
(:mod:`yrcache.store.paths`). Readers never see a partial object, and two writers of one key both
succeed (either result is valid: same key, same content). A put never raises for the file system:
a dropped store is counted and logged.
"""
from __future__ import annotations

import errno
import itertools
import os
import time
from typing import TYPE_CHECKING, Any

from .._native import _C
from ..io.engine import HostBuffer, IoEngine
from . import paths
from .format import build_header
from .janitor import HOST_TAG

if TYPE_CHECKING:
    from .janitor import Usage
    from .state import StoreState


class Writer:
    """Puts for one :class:`~yrcache.store.store.Store`: through its engine, into the directories
    of its :class:`~yrcache.store.state.StoreState` (whose counters and index it updates), within
    the budget of its ledger (``usage``)."""

    def __init__(self, state: StoreState, engine: IoEngine, usage: Usage) -> None:
        self._state = state
        self._engine = engine
        self._usage = usage
        self._tmp_ids = itertools.count()

    def put(self, key: bytes, views: list[memoryview], parent: bytes, chunk_index: int,
            token_count: int, dtype: str, shape: tuple[int, ...], dedup: bool) -> bool:
        """Publish one object (arguments checked by Store.put); False when it was dropped."""
        st = self._state
        if dedup and st.exists(key):
            st.bump("dedup_skips")
            return True
        hdr = HostBuffer(_C.store.header_bytes_for(len(views)))
        h = build_header(hdr, ns=st.ns, key=key, parent=parent, chunk_index=chunk_index,
                         token_count=token_count, dtype=dtype, shape=shape, segments=views,
                         created_unix_ns=time.time_ns(), mac_key=st.mac)
        if not self._admit(h.object_bytes):
            return False
        try:
            self._publish(key, hdr, h, views)
        except OSError as e:
            st.count_error(e.errno or 0, "store")
            st.bump("store_errors")
            st.log_once("store-errno", str(e.errno), "yrcache: store of %s failed: %s",
                        key.hex(), e)
            if not getattr(e, "published", False):
                self._usage.release(h.object_bytes)
                return False
        self._usage.added(h.object_bytes)
        st.note_published(key, h.object_bytes)
        return True

    def _admit(self, nbytes: int) -> bool:
        """Whether the budget has room (never raises: the ledger is only advice); wakes the
        janitor when usage passes the high watermark."""
        st = self._state
        admit, wake = self._usage.admit(nbytes)
        if wake:
            st.janitor_wake.set()
        if not admit:
            st.bump("dropped_full")
            st.log_once("full", "root", "yrcache: cache root %s is at its capacity (%d bytes); "
                        "dropping stores until the janitor frees space", st.root,
                        st.capacity_bytes)
        return admit

    def _publish(self, key: bytes, hdr: Any, h: Any, views: list[memoryview]) -> None:
        """Write, fsync and rename the object. An OSError raised after the rename carries
        ``published = True`` (the object is there; only the directory fsync failed); before it,
        the temp file is removed."""
        st = self._state
        tmp = (f"{HOST_TAG}-{os.getpid()}-{next(self._tmp_ids)}-{os.urandom(4).hex()}"
               f"{paths.TMP_SUFFIX}")
        published = False
        try:
            f = self._engine.open(tmp, "x", dir_fd=st.tmpfd, perm=paths.FILE_MODE)
            try:
                extents = [(f, hdr, 0)] + [(f, v, h.segment(i)[0]) for i, v in enumerate(views)]
                self._engine.write_batch(extents).result()
                if os.fstat(f.fileno()).st_size != h.object_bytes:  # pad an unaligned last segment
                    os.ftruncate(f.fileno(), h.object_bytes)
                self._engine.fsync(f).result()
            finally:
                f.close()
            shard, name = paths.object_location(key.hex())
            for attempt in range(3):
                with paths.opened_dir(st.nsfd, shard, create=True) as d:
                    try:
                        os.rename(tmp, name, src_dir_fd=st.tmpfd, dst_dir_fd=d)
                    except OSError as e:
                        # GlusterFS: a shard directory two clients made at once keeps one
                        # identity; a descriptor of the other answers ESTALE. Open it anew.
                        if e.errno != errno.ESTALE or attempt == 2:
                            raise
                        continue
                    published = True
                    if st.durable:
                        os.fsync(d)
                break
        except OSError as e:
            e.published = published  # type: ignore[attr-defined]
            if not published:
                try:
                    os.unlink(tmp, dir_fd=st.tmpfd)
                except OSError:
                    pass
            raise


__all__ = ["Writer"]
