"""Prompt-lookup drafts: the tokens after the latest earlier occurrence of the longest matching suffix."""

from __future__ import annotations

import pytest

from qwen3_api.engine.ngram_proposer import NgramProposer


def test_copies_what_followed_the_suffix_in_the_prompt() -> None:
    proposer = NgramProposer(num_tokens=4, ngram_min=2, ngram_max=3)
    #          0  1  2  3  4  5  6  7  8   then the output repeats 1 2
    context = [9, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert proposer.propose(context) == [3, 4, 5, 6]


def test_longest_suffix_wins_over_a_more_recent_shorter_one() -> None:
    proposer = NgramProposer(num_tokens=2, ngram_min=1, ngram_max=3)
    # The 3-gram (5, 6, 7) occurred at 0 and is followed by 8 9; the 1-gram 7 occurred last at 5, followed by 0.
    context = [5, 6, 7, 8, 9, 7, 0, 5, 6, 7]
    assert proposer.propose(context) == [8, 9]


def test_most_recent_occurrence_of_the_suffix() -> None:
    proposer = NgramProposer(num_tokens=2, ngram_min=2, ngram_max=2)
    context = [1, 2, 10, 11, 1, 2, 20, 21, 1, 2]
    assert proposer.propose(context) == [20, 21]


def test_no_earlier_occurrence_gives_no_drafts() -> None:
    proposer = NgramProposer(num_tokens=4, ngram_min=2, ngram_max=4)
    assert proposer.propose([1, 2, 3, 4, 5, 6]) == []
    assert proposer.propose([1, 2]) == []
    # A 1-gram repeat does not count when the shortest n-gram is 2.
    assert proposer.propose([1, 2, 3, 1]) == []


def test_drafts_stop_at_the_end_of_the_context_and_at_the_limit() -> None:
    proposer = NgramProposer(num_tokens=5, ngram_min=2, ngram_max=2)
    # (3, 4) occurred at 2; only 5 3 4 follow before the context ends (the overlap with the suffix is fine).
    assert proposer.propose([1, 2, 3, 4, 5, 3, 4]) == [5, 3, 4]
    assert proposer.propose([1, 2, 3, 4, 5, 3, 4], max_tokens=2) == [5, 3]
    assert proposer.propose([1, 2, 3, 4, 5, 3, 4], max_tokens=0) == []


def test_drafts_are_cut_before_a_stop_token() -> None:
    proposer = NgramProposer(num_tokens=4, ngram_min=2, ngram_max=2)
    context = [1, 2, 3, 99, 4, 5, 1, 2]
    assert proposer.propose(context) == [3, 99, 4, 5]
    assert proposer.propose(context, stop_token_ids={99}) == [3]
    assert proposer.propose(context, stop_token_ids={3}) == []


def test_a_self_repeating_output_is_predicted() -> None:
    proposer = NgramProposer(num_tokens=3, ngram_min=2, ngram_max=4)
    context = [7] + [1, 2, 3] * 4
    assert proposer.propose(context) == [1, 2, 3]


@pytest.mark.parametrize(("num_tokens", "low", "high"), [(0, 1, 2), (3, 0, 2), (3, 3, 2)])
def test_bad_configuration_is_refused(num_tokens: int, low: int, high: int) -> None:
    with pytest.raises(ValueError):
        NgramProposer(num_tokens, low, high)
