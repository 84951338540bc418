"""The reference backend: HF transformers `generate`, one request at a time, in a worker thread.

It is the correctness oracle for our engine and the "one request at a time" baseline in benchmarks, so it stays
as plain as possible: each request is one `generate` call whose tokens are streamed back as they appear.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from qwen3_api.engine.outputs import CoreOutput, FinishReason
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.errors import InvalidRequestError

logger = logging.getLogger(__name__)

_UNSUPPORTED = ("presence_penalty", "frequency_penalty", "logprobs", "logit_bias", "structured", "thinking")


def check_reference_params(params: SamplingParams) -> None:
    """The reference backend runs HF `generate`, which has no OpenAI penalties, logit bias or logprobs."""
    defaults = SamplingParams()
    for name in _UNSUPPORTED:
        if getattr(params, name) != getattr(defaults, name):
            raise InvalidRequestError(f"{name} is not supported by the reference backend (--backend reference)", name)


@dataclass
class _Job:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    aborted: threading.Event = field(default_factory=threading.Event)
    tokens: queue.Queue[int | None | BaseException] = field(default_factory=queue.Queue)
    num_generated: int = 0


class _QueueStreamer(BaseStreamer):
    """Forwards each new token of `generate` to the job's queue (the first `put` is the prompt: skipped)."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for token_id in value.reshape(-1).tolist():
            self.job.tokens.put(int(token_id))

    def end(self) -> None:
        self.job.tokens.put(None)


class _AbortCriteria(StoppingCriteria):
    def __init__(self, job: _Job) -> None:
        self.job = job

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.job.aborted.is_set(), dtype=torch.bool)


class ReferenceCore:
    """EngineCore backed by HF `generate`; requests run strictly one after another."""

    def __init__(
        self,
        model_dir: Path,
        dtype: torch.dtype,
        device: torch.device,
        eos_token_ids: tuple[int, ...],
        max_model_len: int,
    ) -> None:
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        self.model = model.to(device).eval()  # type: ignore[arg-type]  # transformers types `to` oddly
        self._waiting: collections.deque[_Job] = collections.deque()
        self._current: _Job | None = None
        self._worker: threading.Thread | None = None

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, prefix_group: str | None = None
    ) -> None:
        check_reference_params(params)
        self._waiting.append(_Job(request_id, list(prompt_token_ids), params))

    def abort_request(self, request_id: str) -> None:
        self._waiting = collections.deque(j for j in self._waiting if j.request_id != request_id)
        if self._current is not None and self._current.request_id == request_id:
            self._current.aborted.set()

    def has_unfinished_requests(self) -> bool:
        return bool(self._waiting) or self._current is not None

    def stats(self) -> dict[str, float]:
        return {"waiting": float(len(self._waiting)), "running": float(self._current is not None)}

    def shutdown(self) -> None:
        if self._current is not None:
            self._current.aborted.set()
        if self._worker is not None:
            self._worker.join(timeout=30)

    def step(self) -> list[CoreOutput]:
        if self._current is None:
            self._current = self._waiting.popleft()
            self._worker = threading.Thread(target=self._generate, args=(self._current,), daemon=True)
            self._worker.start()
        job = self._current
        # Block for the next token, then take whatever else is already there.
        items = [job.tokens.get()]
        while not job.tokens.empty():
            items.append(job.tokens.get_nowait())
        new_tokens = [i for i in items if isinstance(i, int)]
        job.num_generated += len(new_tokens)
        errors = [i for i in items if isinstance(i, BaseException)]
        done = None in items
        if errors:
            self._current = None
            return [CoreOutput(job.request_id, [], error=str(errors[0]) or type(errors[0]).__name__)]
        if job.aborted.is_set():
            self._current = None if done else self._current
            return []  # an aborted request reports nothing more
        output = CoreOutput(job.request_id, new_tokens, num_prompt_tokens=len(job.prompt_token_ids))
        if done:
            self._current = None
            last = new_tokens[-1] if new_tokens else None
            hit_eos = last is not None and not job.params.ignore_eos and last in self._stop_ids(job.params)
            output.finish_reason = FinishReason.STOP if hit_eos else FinishReason.LENGTH
            output.stop_token_id = last if hit_eos else None
        return [output]

    def _stop_ids(self, params: SamplingParams) -> tuple[int, ...]:
        return (() if params.ignore_eos else self.eos_token_ids) + params.stop_token_ids

    def _generate(self, job: _Job) -> None:
        params = job.params
        kwargs: dict[str, object] = {
            "max_new_tokens": params.max_tokens,
            "eos_token_id": list(self._stop_ids(params)) or None,
            "pad_token_id": self.eos_token_ids[-1] if self.eos_token_ids else 0,
            "repetition_penalty": params.repetition_penalty,
        }
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k or None,
                min_p=params.min_p or None,
            )
        try:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            input_ids = torch.tensor([job.prompt_token_ids], device=self.device)
            with torch.inference_mode():
                # A fresh config, so the model's own defaults (its end tokens, sampling) never leak in.
                self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=_QueueStreamer(job),
                    stopping_criteria=StoppingCriteriaList([_AbortCriteria(job)]),
                    generation_config=GenerationConfig(**kwargs),
                )
        except Exception as exc:
            logger.exception("generate failed for %s", job.request_id)
            job.tokens.put(exc)
            job.tokens.put(None)
