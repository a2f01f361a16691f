# SPDX-License-Identifier: Apache-2.0
"""Simulated chat users of an OpenAI-compatible server, as a serving benchmark drives them.

Each user holds one conversation: a shared system prompt, then turns of (user message, streamed
answer). Every turn's prompt is the whole history so far, as a chat client sends it, and the answer
the server streamed (its token ids) is appended before the next user message. Users arrive
open-loop (exponential gaps) and think between turns (exponential), so the server sees
overlapping conversations whose histories no longer fit its KV space. Each turn goes to a server
picked at random among ``urls``: a round-robin router with no session affinity.

Prompts are token ids and the completions API is used: the random-weight models have no tokenizer
or chat template, and token ids make the prompt exactly the same bytes on every run.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Workload:
    """What the users send. ``first_tokens``: the first user message (a document in document
    QA); ``user_tokens``: each later one; ``answer_tokens``: every answer's length (EOS ignored)."""
    users: int
    turns: int
    system_tokens: int = 1024
    first_tokens: int = 256
    user_tokens: int = 128
    answer_tokens: int = 32
    arrival_s: float = 0.5      # mean gap between users' first turns
    think_s: float = 1.0        # mean pause between an answer and the next turn
    vocab: int = 4096
    seed: int = 0


@dataclass
class Turn:
    """One request as the client saw it (times in seconds from the run's start)."""
    user: int
    turn: int
    server: int
    prompt_tokens: int
    start: float
    ttft: float = float("nan")
    latency: float = float("nan")
    answer_tokens: int = 0
    cached_tokens: int | None = None
    error: str = ""


@dataclass
class Run:
    turns: list[Turn] = field(default_factory=list)
    wall_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"wall_s": self.wall_s, "turns": [asdict(t) for t in self.turns]}


async def _lines(content: Any) -> AsyncIterator[bytes]:
    """The stream's lines, stripped, however long: the first event of a long prompt echoes its
    token ids (~6 bytes each, 0.8 MB at 128K), past aiohttp's line limit for ``async for``."""
    buf = b""
    async for data in content.iter_any():
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.strip()
    if buf.strip():
        yield buf.strip()


async def _request(session: Any, url: str, model: str, prompt: list[int], w: Workload,
                   salt: str, rec: Turn) -> list[int]:
    """One streamed completion; fills ``rec`` and returns the answer's token ids."""
    body = {"model": model, "prompt": prompt, "max_tokens": w.answer_tokens, "stream": True,
            "temperature": 0, "ignore_eos": True, "return_token_ids": True,
            "stream_options": {"include_usage": True}, "cache_salt": salt}
    sent = time.perf_counter()
    answer: list[int] = []
    async with session.post(f"{url}/v1/completions", json=body) as r:
        if r.status != 200:
            rec.error = f"HTTP {r.status}: {(await r.text())[:200]}"
            return answer
        async for line in _lines(r.content):
            if not line.startswith(b"data: {"):
                continue
            d = json.loads(line[6:])
            for c in d.get("choices") or ():
                ids = c.get("token_ids") or ()
                if ids and not answer:
                    rec.ttft = time.perf_counter() - sent
                answer.extend(ids)
            usage = d.get("usage")
            if usage:
                rec.cached_tokens = (usage.get("prompt_tokens_details") or {}).get(
                    "cached_tokens")
    rec.latency = time.perf_counter() - sent
    rec.answer_tokens = len(answer)
    if not answer:
        rec.error = "the stream held no token"
    return answer


async def _user(i: int, session: Any, urls: list[str], model: str, w: Workload,
                system: list[int], salt: str, out: Run, t0: float,
                done: Callable[[Turn], None]) -> None:
    rng = random.Random(f"{w.seed}-{i}")
    await asyncio.sleep(sum(rng.expovariate(1 / w.arrival_s) for _ in range(i))
                        if w.arrival_s > 0 else 0)
    history = system + [rng.randrange(w.vocab) for _ in range(w.first_tokens)]
    for turn in range(w.turns):
        server = rng.randrange(len(urls))
        rec = Turn(user=i, turn=turn, server=server, prompt_tokens=len(history),
                   start=time.perf_counter() - t0)
        out.turns.append(rec)
        try:
            answer = await _request(session, urls[server], model, history, w, salt, rec)
        except Exception as e:   # noqa: BLE001 - a failed turn is a result, not a crash
            rec.error, answer = f"{type(e).__name__}: {e}", []
        done(rec)
        if rec.error:
            return   # the conversation cannot go on without its answer
        history = history + answer + [rng.randrange(w.vocab) for _ in range(w.user_tokens)]
        if turn + 1 < w.turns and w.think_s > 0:
            await asyncio.sleep(rng.expovariate(1 / w.think_s))


def run_users(urls: list[str], model: str, w: Workload, salt: str,
              done: Callable[[Turn], None] = lambda t: None, timeout: float = 3600) -> Run:
    """Drive ``w.users`` conversations against ``urls`` until every one has ended."""
    import aiohttp

    async def main() -> Run:
        rng = random.Random(f"{w.seed}-system")
        system = [rng.randrange(w.vocab) for _ in range(w.system_tokens)]
        out = Run()
        conn = aiohttp.TCPConnector(limit=0)
        tmo = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(connector=conn, timeout=tmo) as session:
            t0 = time.perf_counter()
            await asyncio.gather(*(_user(i, session, urls, model, w, system, salt, out, t0,
                                         done) for i in range(w.users)))
            out.wall_s = time.perf_counter() - t0
        return out

    return asyncio.run(main())


__all__ = ["Run", "Turn", "Workload", "run_users"]
