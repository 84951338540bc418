"""The replica choice, without Ray: prefix affinity, load balance, the overload thresholds, stable tie-breaks."""

from __future__ import annotations

import random

import pytest

from qwen3_api.scaleout.routing import PrefixAwareRouter, RouteKey
from qwen3_api.scaleout.routing_key import ROUTING_BLOCK_CHARS, block_hashes, prompt_text


def key(text: str) -> RouteKey:
    return RouteKey(block_hashes(text))


def route(router: PrefixAwareRouter, text: str, request_id: str) -> str:
    decision = router.choose(key(text))
    router.on_routed(decision.ranking[0], key(text), request_id, decision.reason)
    return decision.ranking[0]


def chat(*turns: str) -> dict:
    roles = ["user", "assistant"]
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]}


def test_next_turn_of_a_chat_goes_where_the_previous_turn_went() -> None:
    router = PrefixAwareRouter()
    router.set_replicas(["a", "b", "c"])
    first = prompt_text("/v1/chat/completions", chat("Tell me about the history of the Roman empire, briefly."))
    second = prompt_text(
        "/v1/chat/completions",
        chat("Tell me about the history of the Roman empire, briefly.", "It rose and fell.", "And Byzantium?"),
    )
    replica = route(router, first, "r1")
    router.on_completed("r1")
    # Make the chosen replica the busiest one (within the slack): affinity still wins.
    for i in range(3):
        router.on_routed(replica, RouteKey(), f"busy{i}", "least_loaded")
    decision = router.choose(key(second))
    assert decision.ranking[0] == replica and decision.reason == "prefix"
    assert decision.matched_blocks == len(first) // ROUTING_BLOCK_CHARS


def test_overloaded_holder_loses_the_request_to_the_least_loaded() -> None:
    router = PrefixAwareRouter(overload_slack=2, overload_ratio=1.5)
    router.set_replicas(["a", "b"])
    text = "x" * 200
    holder = route(router, text, "r0")
    other = "b" if holder == "a" else "a"
    router.on_routed(other, RouteKey(), "o1", "least_loaded")  # other: 1 in flight
    for i in range(3):
        router.on_routed(holder, RouteKey(), f"h{i}", "least_loaded")  # holder: 4 = 1 + 3 > 1 + 2 and > 1.5
    decision = router.choose(key(text))
    assert decision.ranking[0] == other and decision.reason == "overloaded"
    router.on_completed("h0")  # holder: 3, not above 1 + 2: affinity again
    assert router.choose(key(text)).ranking[0] == holder


def test_without_a_match_the_least_loaded_replica_is_chosen() -> None:
    router = PrefixAwareRouter()
    router.set_replicas(["a", "b", "c"])
    router.on_routed("a", RouteKey(), "1", "least_loaded")
    router.on_routed("b", RouteKey(), "2", "least_loaded")
    decision = router.choose(key("something never seen before"))
    assert decision.ranking[0] == "c" and decision.reason == "least_loaded"


def test_distinct_requests_spread_and_identical_ones_stay_together() -> None:
    router = PrefixAwareRouter()
    router.set_replicas(["a", "b"])
    chosen = [route(router, f"{i}: conversation number {i} " * 5, f"r{i}") for i in range(8)]  # all in flight
    assert chosen.count("a") == chosen.count("b") == 4
    for i in range(8):
        router.on_completed(f"r{i}")
    again = [router.choose(key(f"{i}: conversation number {i} " * 5)).ranking[0] for i in range(8)]
    assert again == chosen


def test_identical_first_requests_pick_the_same_replica_in_any_order() -> None:
    first, second = PrefixAwareRouter(), PrefixAwareRouter()
    first.set_replicas(["a", "b", "c"])
    second.set_replicas(["c", "a", "b"])
    for text in ("short", "a longer prompt with several blocks of text in it"):
        assert first.choose(key(text)).ranking[0] == second.choose(key(text)).ranking[0]


def test_a_shared_short_system_prompt_alone_does_not_pull_requests() -> None:
    router = PrefixAwareRouter(min_match_ratio=0.5)
    router.set_replicas(["a", "b"])
    system = "You are helpful. "  # one block
    holder = route(router, system + "a" * 400, "r0")
    decision = router.choose(key(system + "b" * 400))
    assert decision.reason == "least_loaded" and decision.ranking[0] != holder


def test_pinned_requests_and_dead_replicas() -> None:
    router = PrefixAwareRouter()
    router.set_replicas(["a", "b"])
    assert router.choose(RouteKey(pinned_replica="b")).ranking == ("b",)
    router.on_routed("b", RouteKey(), "p", "pinned")
    assert router.load("b") == 1 and router.decisions == {}
    holder = route(router, "y" * 100, "r0")
    router.remove_replica(holder)
    assert router.choose(key("y" * 100)).ranking[0] != holder
    assert router.choose(RouteKey(pinned_replica=holder)).ranking[0] != holder  # gone: another one answers
    router.set_replicas([])
    with pytest.raises(ValueError, match="no replica"):
        router.choose(key("z"))


def test_random_policy_ignores_prefixes() -> None:
    router = PrefixAwareRouter(policy="random", rng=random.Random(0))
    router.set_replicas(["a", "b"])
    picks = {route(router, "the same prompt, again and again", f"r{i}") for i in range(20)}
    assert picks == {"a", "b"}


def test_learned_blocks_are_bounded_per_replica() -> None:
    router = PrefixAwareRouter(max_blocks_per_replica=10)
    router.set_replicas(["a"])
    route(router, "q" * 1000, "r0")
    assert router.choose(key("q" * 1000)).matched_blocks == 0  # the oldest (leading) blocks were dropped


def test_prompt_text_covers_each_api() -> None:
    assert prompt_text("/generate", {"prompt": "Hi"}) == "Hi"
    assert prompt_text("/v1/completions", {"prompt": [1, 2]}) == "[1,2]"
    text = prompt_text(
        "/v1/messages", {"system": "S", "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    )
    assert "S" in text and text.endswith("<user>hello")
    assert prompt_text("/v1/responses", {"instructions": "I", "input": "question"}).endswith("<user>question")
    # a chat's next turn starts with the previous turn's text
    one = prompt_text("/v1/chat/completions", chat("first question"))
    two = prompt_text("/v1/chat/completions", chat("first question", "answer", "second"))
    assert two.startswith(one)


def test_block_hashes_chain_and_include_the_partial_block() -> None:
    text = "z" * (2 * ROUTING_BLOCK_CHARS + 3)
    hashes = block_hashes(text)
    assert len(hashes) == 3
    assert block_hashes(text[: 2 * ROUTING_BLOCK_CHARS]) == hashes[:2]
    assert block_hashes("a" + text[1:])[1] != hashes[1]  # a block's hash names everything before it
    assert block_hashes("") == ()


def test_a_completion_that_arrives_before_its_routed_callback_leaves_no_load() -> None:
    # Ray Serve reserves at ranking time, then may run a fast call's completion callback before its routed one
    # (seen with the start-up health probes): the late routed callback must not count the call again.
    router = PrefixAwareRouter()
    router.set_replicas(["a", "b"])
    router.reserve("a", "probe")  # while ranking
    router.on_completed("probe")
    router.confirm("a", RouteKey(), "probe", "pinned")  # the routed callback, late
    assert router.load("a") == 0
    # The next requests then spread over both replicas instead of avoiding "a".
    assert {route(router, f"distinct prompt number {i} " * 8, f"r{i}") for i in range(2)} == {"a", "b"}


def test_a_reservation_moves_with_the_request_and_its_blocks_go_where_it_was_sent() -> None:
    router = PrefixAwareRouter()
    router.set_replicas(["a", "b"])
    text = "a conversation that Ray Serve sends to another replica than the one ranked first " * 2
    router.reserve("a", "r")
    router.reserve("a", "r")  # a second routing round ranks the same replica: still one request
    assert (router.load("a"), router.load("b")) == (1, 0)
    router.confirm("b", key(text), "r", "least_loaded")  # sent to b after all
    assert (router.load("a"), router.load("b")) == (0, 1)
    assert router.choose(key(text + " next turn")).ranking[0] == "b"
    router.on_completed("r")
    assert (router.load("a"), router.load("b")) == (0, 0)
