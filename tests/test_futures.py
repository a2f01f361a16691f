# SPDX-License-Identifier: Apache-2.0
"""The Future API: callbacks on Python threads, asyncio, timeouts, cancel, wait/gather, many
submitting threads, closing with work in flight, clear errors for bad input and closed engines."""
from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref

import numpy as np
import pytest

import yrcache


def rand(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def test_callbacks_run_on_python_dispatcher_thread(engine, data_dir):
    seen: list[tuple[str, int]] = []
    ev = threading.Event()
    with engine.open(data_dir / "c.bin", "w") as f:
        fut = engine.pwrite(f, rand(1 << 20), 0)

        def cb(fu: yrcache.Future[int]) -> None:
            seen.append((threading.current_thread().name, fu.result()))
            ev.set()

        fut.add_done_callback(cb)
        assert ev.wait(30)
        assert seen[0][0].startswith("yrcache-io-") and seen[0][1] == 1 << 20
        # added after completion: runs at once in the calling thread
        fut.add_done_callback(lambda fu: seen.append((threading.current_thread().name, 0)))
        assert seen[1][0] == threading.current_thread().name


def test_callback_exception_does_not_kill_dispatcher(engine, data_dir, caplog):
    with engine.open(data_dir / "c.bin", "w") as f:
        fut = engine.pwrite(f, rand(4096), 0)
        fut.add_done_callback(lambda _: 1 / 0)
        fut.result()
        ev = threading.Event()
        engine.pwrite(f, rand(4096), 0).add_done_callback(lambda _: ev.set())
        assert ev.wait(30)


def test_asyncio_await_and_gather(engine, data_dir):
    data = rand(3 << 20, 4)

    async def main() -> int:
        f = engine.open(data_dir / "a.bin", "w")
        parts = [engine.pwrite(f, data[i << 20:(i + 1) << 20], i << 20) for i in range(3)]
        n = sum(await asyncio.gather(*parts))
        await engine.fsync(f)
        out = np.zeros_like(data)
        assert await engine.pread(f, out, 0) == data.size
        np.testing.assert_array_equal(out, data)
        with pytest.raises(FileNotFoundError):
            await asyncio.sleep(0) or engine.open(data_dir / "nope" / "x", "r")
        f.close()
        return n

    assert asyncio.run(main()) == data.size


def test_asyncio_manual_mode_with_eventfd(backend, data_dir):
    """callbacks="manual": the event loop watches the engine's eventfd and runs callbacks itself."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        eng = yrcache.IoEngine(backend, callbacks="manual")
        loop.add_reader(eng.eventfd, eng.run_callbacks)
        try:
            f = eng.open(data_dir / "m.bin", "w")
            thread_names: list[str] = []
            fut = eng.pwrite(f, rand(1 << 20), 0)
            fut.add_done_callback(lambda _: thread_names.append(threading.current_thread().name))
            assert await asyncio.wait_for(_await(fut), 30) == 1 << 20
            await asyncio.sleep(0)
            assert thread_names == [threading.current_thread().name]  # the loop's own thread
            f.close()
        finally:
            loop.remove_reader(eng.eventfd)
            eng.close()

    asyncio.run(main())


async def _await(fut: yrcache.Future[int]) -> int:
    return await fut


def test_timeout_then_result(backend, data_dir):
    with yrcache.IoEngine(backend, queue_depth=1, chunk_bytes=4096,
                          max_inflight_bytes=4096) as eng:
        with eng.open(data_dir / "t.bin", "w") as f:
            big = eng.pwrite(f, rand(64 << 20), 0)  # 16384 tiny pieces: takes a while
            with pytest.raises(TimeoutError):
                big.result(timeout=0.0)
            assert big.result(timeout=120) == 64 << 20


def test_cancel_queued_request(backend, data_dir):
    with yrcache.IoEngine(backend, queue_depth=1, chunk_bytes=4096,
                          max_inflight_bytes=4096) as eng:
        with eng.open(data_dir / "x.bin", "w") as f:
            first = eng.pwrite(f, rand(32 << 20), 0)   # occupies the single slot for a while
            second = eng.pwrite(f, rand(4096), 1 << 30)
            assert second.cancel()
            assert second.cancelled() and second.done()
            with pytest.raises(yrcache.CancelledError):
                second.result()
            # a loaded machine may not have started the first request yet: wait until it has
            # written something (8192 requests of 4 KiB at depth 1 take far longer than that)
            deadline = time.monotonic() + 30
            while os.path.getsize(data_dir / "x.bin") == 0 and time.monotonic() < deadline:
                time.sleep(0.001)
            assert not first.cancel()  # already started
            assert first.result(timeout=120) == 32 << 20
            assert os.path.getsize(data_dir / "x.bin") == 32 << 20  # the cancelled write never ran


def test_wait_and_gather(engine, data_dir):
    with engine.open(data_dir / "w.bin", "w") as f:
        futs = [engine.pwrite(f, rand(1 << 18, i), i << 18) for i in range(8)]
        done, not_done = yrcache.wait(futs, timeout=60)
        assert len(done) == 8 and not not_done
        assert yrcache.gather(*futs) == [1 << 18] * 8
        futs2 = [engine.pwrite(f, rand(1 << 18, i), i << 18) for i in range(4)]
        done, _ = yrcache.wait(futs2, timeout=60, return_when=yrcache.FIRST_COMPLETED)
        assert len(done) >= 1
        yrcache.wait(futs2)
        engine._inject_faults("write:eio@1")
        bad = engine.pwrite(f, rand(4096), 0)
        done, _ = yrcache.wait([bad], timeout=60, return_when=yrcache.FIRST_EXCEPTION)
        assert bad in done
        res = yrcache.gather(bad, futs2[0], return_exceptions=True)
        assert isinstance(res[0], OSError) and res[1] == 1 << 18
        with pytest.raises(OSError):
            yrcache.gather(bad)


def test_many_threads_submitting(engine, data_dir):
    n_threads, per = 8, 16
    blk = 64 << 10
    f = engine.open(data_dir / "mt.bin", "w")
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(per):
                off = (t * per + i) * blk
                data = np.full(blk, (t * per + i) % 251, np.uint8)
                assert engine.pwrite(f, data, off).result(timeout=60) == blk
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    got = np.fromfile(data_dir / "mt.bin", np.uint8).reshape(n_threads * per, blk)
    np.testing.assert_array_equal(got[:, 0], np.arange(n_threads * per) % 251)
    assert (got == got[:, :1]).all()
    f.close()


def test_close_with_work_in_flight_completes_it(backend, data_dir):
    eng = yrcache.IoEngine(backend, queue_depth=2, chunk_bytes=64 << 10)
    f = eng.open(data_dir / "cl.bin", "w")
    data = rand(16 << 20, 3)
    futs = [eng.pwrite(f, data, 0), eng.pwrite(f, data, 16 << 20)]
    eng.close()  # drains
    assert all(fu.done() for fu in futs) and yrcache.gather(*futs) == [16 << 20] * 2
    np.testing.assert_array_equal(np.fromfile(data_dir / "cl.bin", np.uint8)[: 16 << 20], data)
    with pytest.raises(yrcache.ClosedError):
        eng.pwrite(f, data, 0)
    with pytest.raises(yrcache.ClosedError):
        eng.open(data_dir / "cl.bin", "r")
    eng.close()  # idempotent


def test_close_cancel_fails_queued_work(backend, data_dir):
    eng = yrcache.IoEngine(backend, queue_depth=1, chunk_bytes=4096, max_inflight_bytes=4096)
    f = eng.open(data_dir / "cc.bin", "w")
    futs = [eng.pwrite(f, rand(8 << 20, i), i << 23) for i in range(4)]
    eng.close(cancel=True)
    assert all(fu.done() for fu in futs)
    outcomes = [type(fu.exception()) for fu in futs]
    assert yrcache.CancelledError in outcomes  # queued pieces were cancelled, not written


def test_buffers_kept_alive_until_completion(engine, data_dir):
    """The caller may drop its buffer and the Future at once; the engine keeps the memory alive."""
    with engine.open(data_dir / "k.bin", "w") as f:
        buf = bytearray(rand(8 << 20, 5).tobytes())
        expect = bytes(buf)
        fut = engine.pwrite(f, buf, 0)
        with pytest.raises(BufferError):
            buf.extend(b"x")  # pinned by the request: cannot be resized under the I/O
        del buf
        gc.collect()
        assert fut.result() == len(expect)
        engine.fsync(f).result()
    assert (data_dir / "k.bin").read_bytes() == expect


def test_bad_arguments_are_clear(engine, data_dir):
    with engine.open(data_dir / "b.bin", "w") as f:
        with pytest.raises(TypeError, match="read-only"):
            engine.pread(f, b"immutable", 0)
        with pytest.raises(TypeError, match="buffer protocol"):
            engine.pwrite(f, 12345, 0)
        with pytest.raises(ValueError, match="offset"):
            engine.pwrite(f, b"x", -1)
        with pytest.raises(TypeError, match="yrcache.File"):
            engine.pwrite("not a file", b"x", 0)
        with pytest.raises(TypeError, match="C-contiguous"):
            engine.pwrite(f, np.zeros((8, 8), np.uint8)[:, ::2], 0)
        with pytest.raises(ValueError, match="fallocate"):
            engine.fallocate(f, 0, 0)
    with pytest.raises(ValueError, match="closed file"):
        engine.pwrite(f, b"x", 0)
    with pytest.raises(ValueError, match="backend"):
        yrcache.IoEngine("bogus")
    with pytest.raises(yrcache.BackendUnavailableError, match="cufile"):
        yrcache.IoEngine("cufile")
    with pytest.raises(ValueError, match="queue_depth"):
        yrcache.IoEngine("psync", queue_depth=-1)
    with pytest.raises(ValueError, match="chunk_bytes"):
        yrcache.IoEngine("psync", chunk_bytes=100)


def test_unreferenced_engine_is_collected_and_closed(backend, data_dir):
    eng = yrcache.IoEngine(backend)
    f = eng.open(data_dir / "g.bin", "w")
    fut = eng.pwrite(f, rand(1 << 20), 0)
    r = weakref.ref(eng)
    del eng
    gc.collect()
    deadline = time.monotonic() + 10
    while r() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert r() is None
    assert fut.result(timeout=30) == 1 << 20
