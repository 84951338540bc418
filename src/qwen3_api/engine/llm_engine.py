"""Our engine core: the scheduler decides each step's batch, the model runner computes it, the sampler picks tokens.

    out = scheduler.schedule(); logits = runner.forward(batch_of(out)); tokens = sampler.sample(...);
    scheduler.update(out, tokens)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import torch

from qwen3_api.engine.outputs import CoreOutput, FinishReason
from qwen3_api.engine.prefix_store import PrefixSnapshot
from qwen3_api.engine.protocols import BatchEntry, LogitsMasker, ModelRunner, SampledToken, SamplingRow, TokenSampler
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.engine.scheduler import ScheduledChunk, Scheduler, SchedulerOutput
from qwen3_api.engine.sequence import Sequence
from qwen3_api.engine.speculative import Speculator
from qwen3_api.engine.structured import GrammarCompiler, GrammarMatcher, StructuredOutput
from qwen3_api.engine.thinking import ThoughtTracker
from qwen3_api.errors import InvalidRequestError

logger = logging.getLogger(__name__)


class LLMEngine:
    """EngineCore with continuous batching over a paged KV cache (see `EngineCore` for the contract)."""

    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        sampler: TokenSampler,
        grammar_compiler: Callable[[], GrammarCompiler] | None = None,
        mask_logits: LogitsMasker | None = None,
        speculator: Speculator | None = None,
    ) -> None:
        """Structured output needs both `grammar_compiler` (builds the grammars) and `mask_logits` (applies them
        to a step's logits, on the runner's device). `speculator` turns on speculative decoding (prompt-lookup
        drafts); the runner must then compute draft tokens (`BatchEntry.num_draft_tokens`) and drop rejected ones'
        K/V (`rollback`)."""
        if (grammar_compiler is None) != (mask_logits is None):
            raise ValueError("structured output needs both grammar_compiler and mask_logits, or neither")
        self.scheduler = scheduler
        self.speculator = speculator
        self.runner = runner
        self.sampler = sampler
        self.mask_logits = mask_logits
        self.max_model_len = scheduler.config.max_model_len
        self._make_compiler = grammar_compiler
        self._compiler: GrammarCompiler | None = None
        self._matchers: dict[str, GrammarMatcher] = {}  # requests with structured output
        self._thoughts: dict[str, ThoughtTracker] = {}  # requests with a thinking budget
        self._arrivals = 0
        self.timing = StepTiming()

    def add_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, prefix_group: str | None = None
    ) -> None:
        # Per-request setup that can fail (compiling its grammar, seeding its generator) runs here, where a failure
        # is that request's error alone, rather than inside a step shared with the whole batch.
        if params.structured is not None:
            compiler = self._grammar_compiler()
            self._matchers[request_id] = compiler.matcher(compiler.compile(params.structured))
        if params.thinking is not None:
            self._thoughts[request_id] = ThoughtTracker(params.thinking)
        self._arrivals += 1
        seq = Sequence(request_id, list(prompt_token_ids), params, self._arrivals, prefix_group)
        try:
            self.sampler.add_request(request_id, params)
            self.scheduler.add(seq)
        except Exception:
            self._release([request_id])
            raise

    def prepare_grammar(self) -> None:
        """Build the grammar compiler now (seconds: it indexes the whole vocabulary). The loader calls this before
        serving; done lazily instead, the first structured request would wait for it, and done in a background
        thread it would hold the GIL against the step loop for as long."""
        if self._compiler is None and self._make_compiler is not None:
            self._compiler = self._make_compiler()

    def compile_grammar(self, structured: StructuredOutput) -> None:
        """Compile a request's grammar ahead, in the caller's thread (the HTTP layer's worker thread), so the
        step loop never waits for it: add_request then finds it in the compile cache."""
        self._grammar_compiler().compile(structured)

    def _grammar_compiler(self) -> GrammarCompiler:
        self.prepare_grammar()
        if self._compiler is None:
            raise InvalidRequestError("structured output is not available on this engine", "response_format")
        return self._compiler

    def abort_request(self, request_id: str) -> None:
        if self.scheduler.abort(request_id) is not None:
            self._release([request_id])

    def _release(self, request_ids: Iterable[str]) -> None:
        ids = list(request_ids)
        self.sampler.release(ids)
        self.runner.release(ids)
        for request_id in ids:
            self._matchers.pop(request_id, None)
            self._thoughts.pop(request_id, None)

    @property
    def num_steps(self) -> int:
        """Steps computed so far (those with something scheduled)."""
        return self.timing.steps

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def stats(self) -> dict[str, float]:
        kv = self.scheduler.kv_stats
        return {
            "waiting": float(self.scheduler.num_waiting),
            "running": float(self.scheduler.num_running),
            "kv_usage": kv.usage,
            "prefix_hit_rate": kv.prefix_hit_rate,
            "prefix_queried_tokens": float(kv.prefix_queried_tokens),
            "prefix_hit_tokens": float(kv.prefix_hit_tokens),
            "preemptions": float(self.scheduler.num_preemptions),
            "kv_blocks_used": float(kv.num_blocks - kv.num_free_blocks),
            "kv_blocks_total": float(kv.num_blocks),
            **self.timing.stats(),
            **(self.speculator.stats() if self.speculator is not None else {}),
            **self.runner.stats(),
        }

    def shutdown(self) -> None:
        """Nothing to join: the runner and sampler hold only memory."""

    # ---- prefix cache persistence (engine.prefix_store) ------------------------------------------------------
    @property
    def num_kv_blocks(self) -> int:
        return self.scheduler.kv_cache.num_blocks

    def prefix_cache_version(self) -> int:
        """Changes whenever a block enters the prefix cache."""
        return self.scheduler.kv_cache.num_registrations

    def export_prefix_cache(self, max_blocks: int) -> PrefixSnapshot:
        """The hottest cached blocks (parents first) with a copy of their K/V."""
        blocks = self.scheduler.kv_cache.hottest_cached_blocks(max_blocks)
        kv = self.runner.read_blocks([b for _, _, b in blocks])  # type: ignore[attr-defined]
        return PrefixSnapshot([h for h, _, _ in blocks], [p for _, p, _ in blocks], kv)

    def import_prefix_cache(self, snapshot: PrefixSnapshot) -> int:
        """Put stored blocks into the prefix cache (before serving); how many were taken."""
        blocks = list(zip(snapshot.hashes, snapshot.parents, strict=True))
        assigned = self.scheduler.kv_cache.import_cached_blocks(blocks)
        taken = [(i, b) for i, b in enumerate(assigned) if b is not None]
        if taken:
            rows = torch.tensor([i for i, _ in taken], dtype=torch.long)
            kv = snapshot.kv.index_select(2, rows)
            self.runner.write_blocks([b for _, b in taken], kv)  # type: ignore[attr-defined]
        return len(taken)

    @torch.inference_mode()
    def step(self) -> list[CoreOutput]:
        started = time.perf_counter()
        out = self.scheduler.schedule()
        self._release(out.finished_request_ids)
        # A preempted sequence recomputes from position 0 when readmitted: runner state it holds (llama.cpp's
        # sequence slot) is freed now, so waiting requests never pin it. Its sampler state (seeded RNG) is kept.
        self.runner.release(seq.request_id for seq in out.preempted)
        if not out.chunks:
            return []
        outputs = self._compute(out)
        self.timing.record(out, started, time.perf_counter())
        return outputs

    def _compute(self, out: SchedulerOutput) -> list[CoreOutput]:
        """Forward, sample and update one scheduled step; its outputs."""
        if self.speculator is not None:
            self.scheduler.attach_drafts(out, self.speculator.propose(out, self._speculates))
        forward_started = time.perf_counter()
        logits = self.runner.forward(self._batch(out))  # [sampling chunks + their drafts, V]
        self.timing.forward_seconds += time.perf_counter() - forward_started
        sampling_chunks = [chunk for chunk in out.chunks if chunk.samples]
        sampling = [chunk.seq for chunk in sampling_chunks]
        # A chunk with drafts has 1 + len(drafts) rows; the first is the ordinary next-token row.
        first_rows, all_logits, row = [], logits, 0
        for chunk in sampling_chunks:
            first_rows.append(row)
            row += 1 + len(chunk.draft_token_ids)
        if len(first_rows) != logits.shape[0]:
            logits = logits[first_rows]  # [sampling chunks, V]
        # Work that belongs to one row (its grammar mask, its sampling, its grammar step) fails that row alone:
        # `failed` collects those requests with the reason; they are aborted and reported, the others go on.
        failed: dict[str, str] = {}
        if self._matchers:
            self._apply_masks(logits, sampling, failed)
        if self._thoughts:
            self._end_spent_thoughts(logits, sampling)
        picked = self._sample(logits, sampling, failed)
        ended: set[str] = set()  # grammar complete: only end tokens remain, so stop even with ignore_eos
        for seq in sampling:
            if seq.request_id in failed:
                continue
            thought = self._thoughts.get(seq.request_id)
            if thought is not None:
                thought.accept(picked[seq.request_id].token_id)
            matcher = self._matchers.get(seq.request_id)
            if matcher is None:
                continue
            try:
                if not matcher.accept(picked[seq.request_id].token_id):
                    # Cannot happen with masked logits; if it does, the mask now allows only end tokens.
                    logger.error("request %s: grammar rejected token %d: %s", seq.request_id,
                                 picked[seq.request_id].token_id, matcher.error)  # fmt: skip
                if matcher.is_terminated or matcher.is_error:
                    ended.add(seq.request_id)
            except Exception as exc:
                failed[seq.request_id] = _describe("the grammar failed", exc, seq.request_id)
        more: dict[str, list[SampledToken]] = {}
        if all_logits is not logits:
            alive = {rid: p for rid, p in picked.items() if rid not in failed}
            more = self.speculator.verify(self.sampler, all_logits, sampling_chunks, first_rows, alive)  # type: ignore[union-attr]
            self._drop_rejected_drafts(sampling_chunks, more)
        for request_id in failed:
            self.scheduler.abort(request_id)  # update() skips it; its blocks are free now
        tokens = {rid: [p, *more.get(rid, [])] for rid, p in picked.items() if rid not in failed}
        sampled = {rid: picks[-1].token_id for rid, picks in tokens.items()}
        accepted = {rid: [p.token_id for p in picks[:-1]] for rid, picks in tokens.items() if len(picks) > 1}
        before = {seq.request_id: len(seq.output_token_ids) for seq in sampling}
        finished = self.scheduler.update(out, sampled, frozenset(ended), accepted)
        finished_ids = {s.request_id for s in finished}
        if finished_ids or failed:
            self._release(finished_ids | failed.keys())
        outputs = []
        for seq in sampling:
            if seq.request_id in failed:
                outputs.append(CoreOutput(seq.request_id, [], error=failed[seq.request_id]))
                continue
            picks = tokens[seq.request_id][: len(seq.output_token_ids) - before[seq.request_id]]
            done = seq.request_id in finished_ids
            logprobs = [p.logprob for p in picks if p.logprob is not None]
            outputs.append(
                CoreOutput(
                    request_id=seq.request_id,
                    new_token_ids=[p.token_id for p in picks],
                    new_logprobs=logprobs if logprobs else None,
                    finish_reason=seq.finish_reason if done else None,
                    num_prompt_tokens=seq.num_prompt_tokens,
                    num_cached_tokens=seq.num_cached_tokens,
                    stop_token_id=picks[-1].token_id if done and seq.finish_reason is FinishReason.STOP else None,
                    queue_time=seq.queue_time,
                )
            )
        return outputs

    def _speculates(self, seq: Sequence) -> bool:
        """Rows whose per-token state (grammar matcher, thinking budget) lives here decode one token a step."""
        return seq.request_id not in self._matchers and seq.request_id not in self._thoughts

    def _drop_rejected_drafts(self, chunks: list[ScheduledChunk], more: dict[str, list[SampledToken]]) -> None:
        """Tell the runner which draft positions hold accepted tokens; the K/V of the rest is dropped, so nothing
        (prefix reuse included) ever sees a rejected draft. Failed rows keep none."""
        for chunk in chunks:
            if chunk.draft_token_ids:
                # Tokens after the first: each one sampled means the draft before it was accepted.
                num_accepted = len(more.get(chunk.seq.request_id, []))
                position = chunk.start_position + 1 + num_accepted
                self.runner.rollback(chunk.seq.request_id, position)  # type: ignore[attr-defined]

    def _apply_masks(self, logits: torch.Tensor, sampling: list[Sequence], failed: dict[str, str]) -> None:
        """Grammar masks for the batch at once; if that fails, row by row, so only the failing rows are failed.

        Adding a mask twice changes nothing (0 + 0, -inf + -inf), so rows masked before a failure are safe."""
        matchers = [self._matchers.get(s.request_id) for s in sampling]
        mask_logits = self.mask_logits
        if mask_logits is None:  # unreachable: without it no grammar compiles, so no request has a matcher
            raise InvalidRequestError("structured output is not available on this engine", "response_format")
        try:
            mask_logits(logits, matchers)
            return
        except Exception:
            logger.exception("batched grammar masks failed; retrying row by row")
        for i, (seq, matcher) in enumerate(zip(sampling, matchers, strict=True)):
            if matcher is not None:
                try:
                    mask_logits(logits[i : i + 1], [matcher])
                except Exception as exc:
                    failed[seq.request_id] = _describe("the grammar mask failed", exc, seq.request_id)

    def _sample(
        self, logits: torch.Tensor, sampling: list[Sequence], failed: dict[str, str]
    ) -> dict[str, SampledToken]:
        """One token per sampling row. A row without a finite logit (NaN from the model, or nothing allowed) and a
        row whose sampling raises fail alone: on an error the batch is sampled again row by row."""
        rows = [SamplingRow(s.request_id, s.params, s.prompt_token_ids, s.output_token_ids) for s in sampling]
        if not rows:
            return {}
        finite = torch.isfinite(logits.amax(dim=-1)).tolist()
        for row, ok in zip(rows, finite, strict=True):
            if not ok:
                failed[row.request_id] = "the model produced no finite logit for this request"
        if not failed:
            try:
                return {r.request_id: p for r, p in zip(rows, self.sampler.sample(logits, rows), strict=True)}
            except Exception:
                logger.exception("batched sampling failed; retrying row by row")
        picked = {}
        for i, row in enumerate(rows):
            if row.request_id in failed:
                continue
            try:
                picked[row.request_id] = self.sampler.sample(logits[i : i + 1], [row])[0]
            except Exception as exc:
                failed[row.request_id] = _describe("sampling failed", exc, row.request_id)
        return picked

    def _end_spent_thoughts(self, logits: torch.Tensor, sampling: list[Sequence]) -> None:
        """Rows whose thinking budget is spent may only take the think-end token next (logits [B, V], in place)."""
        rows, ends = [], []
        for row, seq in enumerate(sampling):
            thought = self._thoughts.get(seq.request_id)
            if thought is not None and thought.must_end:
                rows.append(row)
                ends.append(thought.budget.end_token_id)
        if rows:
            row_index = torch.tensor(rows, device=logits.device)
            logits[row_index] = float("-inf")
            logits[row_index, torch.tensor(ends, device=logits.device)] = 0.0

    @staticmethod
    def _batch(out: SchedulerOutput) -> list[BatchEntry]:
        entries = []
        for chunk in out.chunks:
            seq, start = chunk.seq, chunk.start_position
            token_ids = [seq.token_id_at(i) for i in range(start, start + chunk.num_new_tokens)]
            token_ids += chunk.draft_token_ids
            entries.append(BatchEntry(
                token_ids, start, list(seq.block_table), chunk.samples, seq.request_id, len(chunk.draft_token_ids),
            ))  # fmt: skip
        return entries


def _describe(what: str, exc: Exception, request_id: str) -> str:
    logger.error("request %s: %s: %r", request_id, what, exc)
    return f"{what}: {exc}" if str(exc) else f"{what}: {type(exc).__name__}"


class StepTiming:
    """Where an engine's time goes: all steps, the model's forward inside them, and decode-only steps (every
    chunk is one new token, drafts aside), whose mean is the time per output token of a running batch."""

    def __init__(self) -> None:
        self.steps = 0
        self.step_seconds = 0.0
        self.forward_seconds = 0.0
        self.decode_steps = 0
        self.decode_step_seconds = 0.0

    def record(self, out: SchedulerOutput, started: float, ended: float) -> None:
        self.steps += 1
        self.step_seconds += ended - started
        if all(chunk.num_new_tokens == 1 and chunk.samples for chunk in out.chunks):
            self.decode_steps += 1
            self.decode_step_seconds += ended - started

    def stats(self) -> dict[str, float]:
        return {
            "steps": float(self.steps),
            "step_seconds": self.step_seconds,
            "forward_seconds": self.forward_seconds,
            "decode_steps": float(self.decode_steps),
            "decode_step_seconds": self.decode_step_seconds,
        }
