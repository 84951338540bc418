"""The response cache's key, budget, TTL and single flight, in process (the HTTP behaviour is in the e2e tests)."""

from __future__ import annotations

import asyncio
import dataclasses

from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.engine.thinking import ThinkingBudget
from qwen3_api.server.response_cache import (
    ENTRY_OVERHEAD_BYTES,
    GenerationJob,
    ResponseCache,
    is_deterministic,
    parse_cache_control,
    response_cache_key,
)

# A different valid value for every SamplingParams field. A field added to SamplingParams without an entry here
# fails test_every_sampling_field_changes_the_key, so nobody can add a field the key silently ignores.
ALTERED = {
    "max_tokens": 17,
    "temperature": 0.5,
    "top_p": 0.5,
    "top_k": 3,
    "min_p": 0.1,
    "repetition_penalty": 1.1,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "seed": 7,
    "stop": ("END",),
    "stop_token_ids": (5,),
    "ignore_eos": True,
    "logprobs": 2,
    "logit_bias": ((11, 2.0),),
    "skip_special_tokens": False,
    "structured": StructuredOutput(kind="json_object"),
    "thinking": ThinkingBudget(64, 151667, 151668),
}
BASE = SamplingParams(max_tokens=16, temperature=0.0)


def key(params: SamplingParams = BASE, prompt: tuple[int, ...] = (1, 2, 3), n: int = 1, **kw: object) -> str:
    return response_cache_key(kw.pop("identity", "model-a"), kw.pop("route", "chat"),  # type: ignore[arg-type]
                              [GenerationJob(prompt, params, n)], kw or None)  # fmt: skip


def test_every_sampling_field_changes_the_key() -> None:
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    assert names == set(ALTERED), f"give ALTERED a value for {names ^ set(ALTERED)}"
    base = key()
    keys = {base}
    for name, value in ALTERED.items():
        altered = key(dataclasses.replace(BASE, **{name: value}))
        assert altered != base, name
        keys.add(altered)
    assert len(keys) == len(ALTERED) + 1


def test_structured_output_fields_change_the_key() -> None:
    schemas = [
        StructuredOutput(kind="json_object"),
        StructuredOutput(kind="json_schema", schema='{"type": "object"}'),
        StructuredOutput(kind="json_schema", schema='{"type": "array"}'),
        StructuredOutput(kind="tool_calls", tools='[{"name": "f", "parameters": {"type": "object"}}]'),
        StructuredOutput(kind="tool_calls", tools='[{"name": "f", "parameters": {"type": "object"}}]',
                         allow_multiple=True),  # fmt: skip
    ]
    assert len({key(dataclasses.replace(BASE, structured=s)) for s in schemas}) == len(schemas)


def test_prompt_n_route_shape_and_model_change_the_key() -> None:
    base = key()
    assert key() == base  # stable
    for other in (key(prompt=(1, 2, 4)), key(prompt=(1, 2)), key(n=2), key(route="completions"),
                  key(identity="model-b"), key(echo=True)):  # fmt: skip
        assert other != base
    assert key(echo=True) != key(echo=False)


def test_only_greedy_or_seeded_jobs_are_deterministic() -> None:
    assert is_deterministic([GenerationJob((1,), BASE)])
    assert is_deterministic([GenerationJob((1,), SamplingParams(temperature=1.0, seed=3), n=4)])
    assert not is_deterministic([GenerationJob((1,), SamplingParams(temperature=1.0))])
    assert not is_deterministic([GenerationJob((1,), BASE), GenerationJob((2,), SamplingParams(temperature=0.7))])


def test_cache_control_directives() -> None:
    assert parse_cache_control("No-Cache") == {"no-cache"}
    assert parse_cache_control("max-age=0, no-store") == {"max-age", "no-store"}
    assert parse_cache_control(None) == set()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_budget_is_never_exceeded_and_lru_goes_first() -> None:
    record = ["x" * 1000]
    cache = ResponseCache(budget_bytes=5000, ttl_seconds=60)
    for i in range(20):
        assert cache.put(f"k{i}", record)
        assert cache.bytes <= 5000
        if i == 2:
            assert cache.get("k0") == record  # k0 is now the most recently used
    assert cache.get("k19") == record
    assert cache.get("k1") is None  # least recently used: evicted first
    assert cache.num_entries == cache.bytes // (cache.bytes // cache.num_entries)
    assert not cache.put("huge", ["x" * 10_000])  # larger than the whole budget: refused
    assert cache.bytes <= 5000 and cache.get("huge") is None


def test_entry_size_is_its_stored_bytes() -> None:
    cache = ResponseCache(budget_bytes=10**6, ttl_seconds=60)
    cache.put("k", ["y" * 5000])
    assert 5000 + ENTRY_OVERHEAD_BYTES < cache.bytes < 5100 + ENTRY_OVERHEAD_BYTES


def test_ttl_expires_entries() -> None:
    clock = FakeClock()
    cache = ResponseCache(budget_bytes=10**6, ttl_seconds=10, clock=clock)
    cache.put("old", [1])
    clock.now = 5
    cache.put("new", [2])
    assert cache.get("old") == [1]
    clock.now = 12
    assert cache.get("old") is None and cache.get("new") == [2]
    clock.now = 16
    cache.put("newest", [3])  # storing drops what has expired
    assert cache.num_entries == 1


def test_disabled_cache_stores_nothing() -> None:
    cache = ResponseCache(budget_bytes=0, ttl_seconds=60)
    assert not cache.enabled and not cache.put("k", [1]) and cache.num_entries == 0


def test_waiters_get_the_leaders_record() -> None:
    async def scenario() -> None:
        cache = ResponseCache(budget_bytes=10**6, ttl_seconds=60)
        leader = cache.acquire("k")
        assert leader.status == "miss"
        waiters = [asyncio.create_task(cache.lookup("k")) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(w.done() for w in waiters)
        cache.finish("k", leader.flight, ["done"])
        results = await asyncio.gather(*waiters)
        assert [(r.status, r.record) for r in results] == [("hit", ["done"])] * 3
        assert (cache.hits, cache.misses) == (3, 1)
        assert cache.acquire("k").status == "hit"

    asyncio.run(scenario())


def test_abandoned_flight_makes_one_waiter_the_leader() -> None:
    async def scenario() -> None:
        cache = ResponseCache(budget_bytes=10**6, ttl_seconds=60)
        first = cache.acquire("k")
        waiters = [asyncio.create_task(cache.lookup("k")) for _ in range(3)]
        gone = asyncio.create_task(cache.lookup("k"))
        await asyncio.sleep(0)
        gone.cancel()  # a waiter whose client left: the flight goes on for the others
        cache.finish("k", first.flight, None)  # the leader failed
        for _ in range(5):  # let every waiter run
            await asyncio.sleep(0)
        done = [w for w in waiters if w.done()]
        assert len(done) == 1 and done[0].result().status == "miss"  # exactly one computes
        cache.finish("k", done[0].result().flight, ["second try"])
        results = [await w for w in waiters]
        assert sorted(r.status for r in results) == ["hit", "hit", "miss"]
        assert (cache.hits, cache.misses) == (2, 2)

    asyncio.run(scenario())
