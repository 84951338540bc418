"""Thinking budgets: end a Qwen3 thought after a number of tokens, so the answer is never lost to it.

A request with a budget is followed token by token: the thought opens with the think-start token (or is already
open when the prompt ends inside `<think>`, as thinking-only templates make it), every token until the
think-end token is spent from the budget, and once the budget is spent the engine forces the think-end token
as the next one. The model then writes its answer after `</think>` as usual. Pure Python: the engine applies
the forcing to the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen3_api.errors import InvalidRequestError


@dataclass(frozen=True)
class ThinkingBudget:
    """At most `max_tokens` tokens inside the thought (0 closes it at once), then `end_token_id` is forced."""

    max_tokens: int
    start_token_id: int
    end_token_id: int
    starts_open: bool = False  # the prompt itself ended inside `<think>`

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise InvalidRequestError(
                f"thinking_budget must be an integer >= 0, got {self.max_tokens!r}", "thinking_budget"
            )


class ThoughtTracker:
    """Where one sequence is in its thought; fed each sampled token."""

    def __init__(self, budget: ThinkingBudget) -> None:
        self.budget = budget
        self.in_thought = budget.starts_open
        self.closed = False  # Qwen3 thinks once per turn: a later think-start is ordinary output
        self.spent = 0

    @property
    def must_end(self) -> bool:
        """True when the next token has to be the think-end token."""
        return self.in_thought and self.spent >= self.budget.max_tokens

    def accept(self, token_id: int) -> None:
        if self.in_thought:
            if token_id == self.budget.end_token_id:
                self.in_thought, self.closed = False, True
            else:
                self.spent += 1
        elif not self.closed and token_id == self.budget.start_token_id:
            self.in_thought = True
