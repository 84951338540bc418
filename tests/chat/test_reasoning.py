"""ReasoningParser on hand-written Qwen3 outputs: whole-text split, and streaming at every chunk boundary."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from qwen3_api.chat.reasoning import (
    ReasoningDelta,
    ReasoningParser,
    partial_tag_length,
    prompt_opens_reasoning,
)


def chunkings(text: str, seed: int = 0, random_splits: int = 30) -> Iterator[list[str]]:
    """Ways to stream `text`: whole, every single split, one char at a time, seeded random multi-splits."""
    yield [text]
    for cut in range(1, len(text)):
        yield [text[:cut], text[cut:]]
    yield list(text)
    rng = random.Random(seed)
    for attempt in range(random_splits):
        if len(text) < 3:
            break
        cuts = sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(2, 12))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        if attempt % 5 == 0:
            pieces.insert(rng.randrange(len(pieces) + 1), "")  # empty deltas happen (e.g. a held-back token)
        yield pieces


def stream(chunks: list[str], starts_in_reasoning: bool) -> tuple[list[str], list[str]]:
    """Feed `chunks` then finish; return the reasoning deltas and content deltas."""
    parser = ReasoningParser(starts_in_reasoning)
    deltas = [parser.feed(chunk) for chunk in chunks] + [parser.finish()]
    return [d.reasoning for d in deltas], [d.content for d in deltas]


# (output text, starts_in_reasoning, expected reasoning, expected content)
CASES = {
    "thinking_and_answer": (
        "<think>\nThe user asks 2+2. That is 4.\n</think>\n\nThe answer is **4**.",
        False,
        "The user asks 2+2. That is 4.",
        "The answer is **4**.",
    ),
    "multiline_reasoning": (
        "<think>\nFirst line.\n\nSecond paragraph: a < b, and </thin is no tag.\n</think>\n\nDone.\nBye.\n",
        False,
        "First line.\n\nSecond paragraph: a < b, and </thin is no tag.",
        "Done.\nBye.\n",
    ),
    "no_thinking": (
        "Just an answer, no thoughts.\n\nSecond line.",
        False,
        None,
        "Just an answer, no thoughts.\n\nSecond line.",
    ),
    "no_thinking_starting_with_angle": (
        "<b>bold</b> and <thinking> is not a tag",
        False,
        None,
        "<b>bold</b> and <thinking> is not a tag",
    ),
    "empty_think_block": ("<think>\n\n</think>\n\nHello there.", False, None, "Hello there."),
    "whitespace_before_think": ("\n  <think>\nhmm\n</think>\n\nok", False, "hmm", "ok"),
    "template_opened_think": (
        "Let me think about this.\nIt is 4.\n</think>\n\nIt's 4.",
        True,
        "Let me think about this.\nIt is 4.",
        "It's 4.",
    ),
    "template_opened_think_with_leading_newline": (
        "\nReasoning here.\n</think>\n\nAnswer.",
        True,
        "Reasoning here.",
        "Answer.",
    ),
    "template_opened_but_model_repeats_open_tag": ("<think>\nr\n</think>\n\nc", True, "r", "c"),
    "truncated_in_reasoning": ("<think>\nStep 1: consider the\n\n", False, "Step 1: consider the", ""),
    "truncated_in_reasoning_partial_close_tag": (
        "<think>\nalmost done\n</thi",
        False,
        "almost done\n</thi",
        "",
    ),
    "template_opened_truncated": ("Still thinking about it", True, "Still thinking about it", ""),
    "think_tags_inside_content_are_content": (
        "<think>\nx\n</think>\n\nI use <think> and </think> tags.",
        False,
        "x",
        "I use <think> and </think> tags.",
    ),
    "partial_open_tag_at_end": ("<thi", False, None, "<thi"),
    "empty_output": ("", False, None, ""),
    "emoji_and_chinese": ("<think>\n想一想 🤔\n</think>\n\n答案是 42 🎉", False, "想一想 🤔", "答案是 42 🎉"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_split_whole_output(name: str) -> None:
    text, starts_in_reasoning, reasoning, content = CASES[name]
    assert ReasoningParser(starts_in_reasoning).split(text) == (reasoning, content)


@pytest.mark.parametrize("name", list(CASES))
def test_streaming_matches_split_at_every_boundary(name: str) -> None:
    text, starts_in_reasoning, reasoning, content = CASES[name]
    for chunks in chunkings(text, seed=len(name)):
        reasoning_deltas, content_deltas = stream(chunks, starts_in_reasoning)
        assert ("".join(reasoning_deltas) or None, "".join(content_deltas)) == (reasoning, content), chunks
        # No tag (or a piece of one) ever goes out: where the expected text has no "<", no delta may have one.
        if "<" not in (reasoning or ""):
            assert not any("<" in d for d in reasoning_deltas), chunks
        if "<" not in content:
            assert not any("<" in d for d in content_deltas), chunks


def test_reasoning_and_content_arrive_before_finish() -> None:
    parser = ReasoningParser()
    assert parser.feed("<think>\nabc").reasoning == "abc"
    assert parser.feed(" def\n").reasoning == " def"  # the newline waits: it may precede </think>
    assert parser.feed("ghi").reasoning == "\nghi"
    delta = parser.feed("\n</think>\n\nThe answer")
    assert (delta.reasoning, delta.content) == ("", "The answer")
    assert parser.feed(" is 4.").content == " is 4."
    assert parser.finish() == ReasoningDelta("", "")


def test_text_with_less_than_is_emitted_promptly() -> None:
    content = ReasoningParser()
    assert content.feed("a < b").content == "a < b"
    reasoning = ReasoningParser()
    reasoning.feed("<think>\n")
    assert reasoning.feed("a <").reasoning == "a "  # "<" could start </think>
    assert reasoning.feed(" b").reasoning == "< b"


def test_only_a_possible_tag_prefix_is_held() -> None:
    parser = ReasoningParser()
    assert parser.feed("  <th").content == ""
    assert parser.feed("e").content == "  <the"


def test_feed_after_finish_is_an_error() -> None:
    parser = ReasoningParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


def test_split_does_not_disturb_streaming_state() -> None:
    parser = ReasoningParser()
    parser.feed("<think>\nhalf")
    assert parser.split("plain") == (None, "plain")
    assert parser.finish().reasoning == ""
    assert ReasoningParser().split("<think>\nhalf") == ("half", "")


def test_partial_tag_length() -> None:
    assert partial_tag_length("abc </thi", "</think>") == 5
    assert partial_tag_length("abc", "</think>") == 0
    assert partial_tag_length("</think>", "</think>") == 0  # a whole tag is not a partial one
    assert partial_tag_length("<", "</think>") == 1


def test_prompt_opens_reasoning() -> None:
    assert prompt_opens_reasoning("<|im_start|>assistant\n<think>\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n")
    assert not prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not prompt_opens_reasoning("<|im_start|>user\nWhat is <think>?<|im_end|>\n<|im_start|>assistant\n")
