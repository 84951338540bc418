"""IncrementalDetokenizer against the real Qwen3 tokenizer: exact text, partial characters, stop strings."""

from __future__ import annotations

import random

import pytest
import transformers

from qwen3_api.demo_models.checkpoints import cached_test_model
from qwen3_api.engine.detokenize import IncrementalDetokenizer

IM_END = 151645
THINK = 151667

TEXTS = [
    "Hello, world! This is a plain English sentence.",
    "  leading spaces, trailing spaces   ",
    "你好，世界！这是一个中文句子，包含标点符号。",
    "Mixed 中文 and English, 日本語のテキスト, 한국어 텍스트.",
    "Emoji: 😀 👍🏽 🏳️‍🌈 👨‍👩‍👧‍👦 🧑🏿‍🚀 and flags 🇯🇵🇫🇷",
    "def f(x):\n    return {'a': [x ** 2 for x in range(10)]}  # comment\n\tif x != 0: pass\n",
    "whitespace runs:\n\n\n\n    \t\t  \r\n   end",
    "Accents: café naïve façade Ünïcödé Ωμέγα Привет",
    "Math ∑∫√∞ ≠ ≤ ≥ and arrows → ← ↔, box ┌─┐",
    "<think>\nLet me reason.\n</think>\n\nThe answer is 42.",
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>',
]


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(cached_test_model("tiny"))


def stream(detokenizer: IncrementalDetokenizer, token_ids: list[int], chunk: int = 1) -> list[str]:
    """Feed `token_ids` `chunk` at a time; return every delta's text, the flush last."""
    deltas = [detokenizer.add(token_ids[i : i + chunk]).text for i in range(0, len(token_ids), chunk)]
    return deltas + [detokenizer.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_one_token_at_a_time_matches_full_decode(tokenizer, text: str) -> None:
    token_ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer.encode("User said:"))
    deltas = stream(detokenizer, token_ids)
    assert "".join(deltas) == tokenizer.decode(token_ids) == text
    assert detokenizer.output_text == text
    assert not any("\ufffd" in delta for delta in deltas)


@pytest.mark.parametrize("chunk", [2, 3, 7])
def test_chunked_adds_match_full_decode(tokenizer, chunk: int) -> None:
    text = " ".join(TEXTS)
    token_ids = tokenizer.encode(text)
    deltas = stream(IncrementalDetokenizer(tokenizer, []), token_ids, chunk)
    assert "".join(deltas) == text
    assert not any("\ufffd" in delta for delta in deltas)


def test_random_token_ids_match_full_decode(tokenizer) -> None:
    # Model output is not always valid UTF-8; whatever it is, the stream must equal the full decode.
    rng = random.Random(0)
    for _ in range(30):
        token_ids = [rng.randrange(151643) for _ in range(rng.randrange(1, 40))]
        deltas = stream(
            IncrementalDetokenizer(tokenizer, [rng.randrange(151643) for _ in range(8)]), token_ids
        )
        assert "".join(deltas) == tokenizer.decode(token_ids)


def test_partial_character_is_held_until_complete(tokenizer) -> None:
    token_ids = tokenizer.encode("x 👨‍👩‍👧 y")
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    deltas = [detokenizer.add([token_id]).text for token_id in token_ids]
    assert "" in deltas  # some tokens end mid-character and must emit nothing
    assert "".join(deltas) == "x 👨‍👩‍👧 y"


def test_output_cut_mid_character_is_released_by_flush(tokenizer) -> None:
    token_ids = tokenizer.encode("ok 👨")[:-1]  # the last token is a partial character
    detokenizer = IncrementalDetokenizer(tokenizer, [])
    emitted = "".join(detokenizer.add([token_id]).text for token_id in token_ids)
    assert "\ufffd" not in emitted
    assert emitted + detokenizer.flush() == tokenizer.decode(token_ids)


def test_prompt_ending_mid_character_does_not_change_output(tokenizer) -> None:
    ids = tokenizer.encode("prompt 👨‍👩 then output")
    split = next(i for i in range(1, len(ids)) if tokenizer.decode(ids[:i]).endswith("\ufffd"))
    prompt, output = ids[:split], ids[split:]
    assert "".join(stream(IncrementalDetokenizer(tokenizer, prompt), output)) == tokenizer.decode(output)


def test_decoding_window_stays_small(tokenizer) -> None:
    """Each step decodes a few recent tokens, never the whole output."""
    window_sizes: list[int] = []

    class CountingTokenizer:
        def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
            window_sizes.append(len(token_ids))
            return tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    token_ids = tokenizer.encode(" ".join(TEXTS) * 5)
    assert len(token_ids) > 500
    deltas = stream(IncrementalDetokenizer(CountingTokenizer(), tokenizer.encode("prompt")), token_ids)
    assert "".join(deltas) == tokenizer.decode(token_ids)
    assert max(window_sizes) <= 12


def test_special_tokens_skipped_and_kept(tokenizer) -> None:
    token_ids = tokenizer.encode("hi") + [IM_END] + tokenizer.encode(" there")
    assert "".join(stream(IncrementalDetokenizer(tokenizer, []), token_ids)) == "hi there"
    kept = stream(IncrementalDetokenizer(tokenizer, [], skip_special_tokens=False), token_ids)
    assert "".join(kept) == "hi<|im_end|> there"


def test_think_and_tool_call_markers_are_text(tokenizer) -> None:
    text = "<think>\nhmm\n</think>\n\n<tool_call>\n{}\n</tool_call>"
    token_ids = tokenizer.encode(text)
    assert THINK in token_ids
    assert "".join(stream(IncrementalDetokenizer(tokenizer, []), token_ids)) == text


@pytest.mark.parametrize(
    ("text", "stop"),
    [
        ("The result is <answer>42</answer> and then more text", "</answer>"),
        ("Count: one two ###END### three four", "###END###"),
        ("我们现在停止吧，后面的文字不应该出现", "停止吧"),
        ("family 👨‍👩‍👧 and more", "👩‍👧"),
    ],
)
def test_stop_string_across_tokens_is_never_partially_emitted(tokenizer, text: str, stop: str) -> None:
    token_ids = tokenizer.encode(text)
    expected = text[: text.index(stop)]
    detokenizer = IncrementalDetokenizer(tokenizer, [], stop=("never-matches", stop))
    emitted = ""
    matched_at = None
    for step, token_id in enumerate(token_ids):
        delta = detokenizer.add([token_id])
        emitted += delta.text
        assert expected.startswith(emitted)  # nothing of the stop string or beyond ever goes out
        if delta.stop_string is not None:
            matched_at = step
            assert delta.stop_string == stop
    assert matched_at is not None
    # The stop string came in pieces: its first token arrived before the one that completed it.
    first_stop_token = next(
        i for i in range(len(token_ids)) if len(tokenizer.decode(token_ids[: i + 1])) > len(expected)
    )
    assert first_stop_token < matched_at
    assert detokenizer.flush() == ""
    assert emitted == detokenizer.output_text == expected
    assert detokenizer.stop_string == stop
    assert detokenizer.add(tokenizer.encode(" more")).text == ""


def test_stop_prefix_that_does_not_match_is_released(tokenizer) -> None:
    detokenizer = IncrementalDetokenizer(tokenizer, [], stop=("</answer>",))
    emitted_after: dict[str, str] = {}  # text decoded so far -> text emitted so far
    token_ids = tokenizer.encode("a </ans b </answ c")
    for i, token_id in enumerate(token_ids):
        assert detokenizer.add([token_id]).stop_string is None
        emitted_after[tokenizer.decode(token_ids[: i + 1])] = detokenizer.output_text
    assert emitted_after["a </ans"] == "a "  # held: it could still become "</answer>"
    assert emitted_after["a </ans b"] == "a </ans b"  # released once it cannot
    assert detokenizer.flush() == ""
    assert detokenizer.output_text == "a </ans b </answ c"
    assert detokenizer.stop_string is None


def test_flush_releases_held_stop_prefix(tokenizer) -> None:
    detokenizer = IncrementalDetokenizer(tokenizer, [], stop=("</answer>",))
    emitted = "".join(detokenizer.add([t]).text for t in tokenizer.encode("done </ans"))
    assert emitted == "done "
    assert detokenizer.flush() == "</ans"
    assert detokenizer.output_text == "done </ans"


def test_stop_at_the_very_start(tokenizer) -> None:
    detokenizer = IncrementalDetokenizer(tokenizer, [], stop=("Hello",))
    delta = detokenizer.add(tokenizer.encode("Hello world"))
    assert delta == type(delta)("", "Hello", 1)  # the output keeps the one token that completed the stop string
    assert detokenizer.output_text == ""


def test_stop_choice_does_not_depend_on_chunking(tokenizer) -> None:
    # "bcd" completes before "abcdef" does, so it wins whether the text arrives at once or token by token.
    token_ids = tokenizer.encode("xx abcdef yy")
    stops = ("abcdef", "bcd")
    results = []
    for chunk in (1, 2, len(token_ids)):
        detokenizer = IncrementalDetokenizer(tokenizer, [], stop=stops)
        stream(detokenizer, token_ids, chunk)
        results.append((detokenizer.output_text, detokenizer.stop_string))
    assert results == [("xx a", "bcd")] * 3


class DecodeSpy:
    """The real tokenizer, recording how many tokens each decode call is given."""

    def __init__(self, tokenizer: transformers.PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.lengths: list[int] = []

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        self.lengths.append(len(token_ids))
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens))


def test_runs_of_skipped_special_tokens_keep_each_decode_small(tokenizer) -> None:
    spy = DecodeSpy(tokenizer)
    detokenizer = IncrementalDetokenizer(spy, tokenizer.encode("User said:"))
    token_ids = tokenizer.encode("Hi 你好") + [IM_END, 151643] * 200 + tokenizer.encode(" there 😀")
    deltas = stream(detokenizer, token_ids)
    assert "".join(deltas) == tokenizer.decode(token_ids, skip_special_tokens=True) == "Hi 你好 there 😀"
    # each step decodes a window of a few tokens, however long the run of special tokens before it
    assert max(spy.lengths) <= 12, max(spy.lengths)


def test_several_tokens_at_once_stop_at_the_token_that_completes_the_stop_string(tokenizer) -> None:
    """One step of speculative decoding adds several tokens: the output keeps those up to the one completing the
    stop string, with the text that adding them one at a time gives."""
    token_ids = tokenizer.encode("alpha beta STOP gamma delta")
    one_by_one = IncrementalDetokenizer(tokenizer, [], stop=("STOP",))
    texts, kept = [], 0
    for token_id in token_ids:
        delta = one_by_one.add([token_id])
        texts.append(delta.text)
        kept += 1
        if delta.stop_string is not None:
            break
    assert kept < len(token_ids)  # the stop string ends the output before the last token
    at_once = IncrementalDetokenizer(tokenizer, [], stop=("STOP",)).add(token_ids)
    assert at_once.stop_string == "STOP"
    assert at_once.num_tokens == kept
    assert at_once.text == "".join(texts) == "alpha beta "
