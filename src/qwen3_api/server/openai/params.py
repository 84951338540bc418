"""The one translation of OpenAI requests into engine sampling parameters."""

from __future__ import annotations

from dataclasses import dataclass

from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.structured import StructuredOutput
from qwen3_api.engine.thinking import ThinkingBudget
from qwen3_api.errors import InvalidRequestError
from qwen3_api.server.openai.protocol import SamplingFields


@dataclass(frozen=True)
class SamplingDefaults:
    """Values used when a request leaves them unset."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0


# Qwen's published recommendations for Qwen3 hybrid models, by mode.
THINKING_DEFAULTS = SamplingDefaults(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
NON_THINKING_DEFAULTS = SamplingDefaults(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)


# reasoning_effort as thinking budgets in tokens (README "Thinking budget"); the Responses API's reasoning.effort
# and Anthropic's thinking.budget_tokens end up in the same engine parameter.
REASONING_EFFORT_BUDGETS = {"low": 1024, "medium": 4096, "high": 16384}


def thinking_budget_of(thinking_budget: int | None, reasoning_effort: str | None) -> int | None:
    """The budget a request asks for: `thinking_budget` tokens, or the budget of a `reasoning_effort`."""
    if thinking_budget is not None and reasoning_effort is not None:
        raise InvalidRequestError("give thinking_budget or reasoning_effort, not both", "thinking_budget")
    if reasoning_effort is not None:
        return REASONING_EFFORT_BUDGETS[reasoning_effort]
    return thinking_budget


def _logit_bias(request: SamplingFields) -> tuple[tuple[int, float], ...]:
    return tuple(sorted((int(k), float(v)) for k, v in (request.logit_bias or {}).items()))


def to_sampling_params(
    request: SamplingFields,
    *,
    max_tokens: int,
    defaults: SamplingDefaults,
    logprobs: int | None,
    structured: StructuredOutput | None = None,
    thinking: ThinkingBudget | None = None,
) -> SamplingParams:
    """Engine parameters for any OpenAI request: given values win, `defaults` fill the rest."""
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=defaults.temperature if request.temperature is None else request.temperature,
            top_p=defaults.top_p if request.top_p is None else request.top_p,
            top_k=defaults.top_k if request.top_k is None else request.top_k,
            min_p=defaults.min_p if request.min_p is None else request.min_p,
            repetition_penalty=request.repetition_penalty or 1.0,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            seed=request.seed,
            stop=request.stop_list,
            ignore_eos=request.ignore_eos,
            logprobs=logprobs,
            logit_bias=_logit_bias(request),
            structured=structured,
            thinking=thinking,
        )
    except InvalidRequestError:
        raise
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(str(exc)) from exc
