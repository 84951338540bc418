"""Batched token sampling: logit bias, penalties, logprobs, greedy, temperature, top-k / top-p / min-p, seeds.

This runs every decode step over every running row (vocab 151936), so each stage touches only the rows that
use it, nothing loops over the vocabulary in Python, and the vocabulary is fully sorted only as a last resort.
Truncated rows pick their candidates (top_k, or the first nucleus candidates) from the raw logits and divide only
those by the temperature: a top-k row never makes a second pass over its 151,936 columns.

Order of the stages for each row (`logits` is the model's output for the next token):
  1. logit_bias is added;
  2. repetition_penalty (HF/CTRL: over prompt + output tokens, positive logits divided, negative multiplied);
  3. presence_penalty and frequency_penalty (OpenAI: over output tokens only);
  4. logprobs are the log_softmax of these processed logits: before temperature, top-k, top-p and min-p, so
     they describe the model (with the request's bias and penalties), not the truncated sampling distribution;
  5. greedy rows (temperature 0) take the argmax;
  6. other rows: divide by temperature, keep the top_k, then the top_p nucleus, then tokens with
     prob >= min_p * max prob, and draw one token by inverse CDF with a single uniform number.

Seeds: a request with `params.seed` gets its own generator, seeded once at `add_request()` (so a seed the generator
rejects fails that request alone, before any step) and kept until `release()`. Each step
it draws exactly one number from it, and its row is processed on its own, so its tokens depend neither on the
other rows in the batch nor on its position. Unseeded rows share one generator and are processed together.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from qwen3_api.engine.outputs import TokenLogprob
from qwen3_api.engine.protocols import SampledToken, SamplingRow
from qwen3_api.engine.sampling import SamplingParams
from qwen3_api.errors import InvalidRequestError

# Rows with top_p but no top_k look for their nucleus among this many most likely tokens first (topk of 1024
# is ~1 ms per row of 151936 on one CPU core, of 16384 ~3.5 ms); only when those hold less than top_p of the
# mass is the whole row sorted (~17 ms). Real models' nuclei are mostly small; flat ones reach the sort.
NUCLEUS_CANDIDATES = (1024, 16384)


class Sampler:
    """Picks the next token for every row of a batch; keeps one generator per seeded request (an engine
    `TokenSampler`)."""

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu") -> None:
        """`seed` makes the shared generator of unseeded rows reproducible (tests, benchmarks); `device` is where
        the logits live (per-request generators are made there at `add_request`)."""
        self._seed = seed
        self.device = torch.device(device)
        self._shared_generators: dict[torch.device, torch.Generator] = {}
        self._request_generators: dict[str, torch.Generator] = {}

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[SampledToken]:
        """Choose one token per row of `logits` (B, V); `rows[i]` describes row i. `logits` is left as is."""
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(
                f"logits must have shape (len(rows)={len(rows)}, vocab), got {tuple(logits.shape)}"
            )
        if not rows:
            return []
        logits = logits.float()  # no copy when it already is float32
        if any(row.params.logit_bias or row.params.needs_penalties for row in rows):
            logits = logits.clone()  # the stages below write in place; the caller's tensor stays as it was
            _add_logit_bias(logits, rows)
            _apply_penalties(logits, rows)

        logprob_rows = [i for i, row in enumerate(rows) if row.params.logprobs is not None]
        log_probs = torch.log_softmax(_take(logits, logprob_rows), dim=-1) if logprob_rows else None

        token_ids = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        greedy_rows = [i for i, row in enumerate(rows) if row.params.greedy]
        if greedy_rows:
            token_ids[greedy_rows] = _argmax(_take(logits, greedy_rows))
        shared_rows = [i for i, row in enumerate(rows) if not row.params.greedy and row.params.seed is None]
        if shared_rows:
            generator = self._shared_generator(logits.device)
            uniform = torch.rand(len(shared_rows), generator=generator, device=logits.device)
            params = [rows[i].params for i in shared_rows]
            token_ids[shared_rows] = _sample_random(_take(logits, shared_rows), params, uniform)
        for i, row in enumerate(rows):
            if not row.params.greedy and row.params.seed is not None:
                generator = self._request_generator(row, logits.device)
                uniform = torch.rand(1, generator=generator, device=logits.device)
                token_ids[i] = _sample_random(logits[i : i + 1], [row.params], uniform)[0]

        chosen = token_ids.tolist()
        logprobs = (
            _collect_logprobs(log_probs, token_ids, rows, logprob_rows) if log_probs is not None else {}
        )
        return [SampledToken(token_id, logprobs.get(i)) for i, token_id in enumerate(chosen)]

    def add_request(self, request_id: str, params: SamplingParams) -> None:
        """Make a seeded request's generator now; a seed the generator rejects is that request's error."""
        if params.seed is None or request_id in self._request_generators:
            return
        self._request_generators[request_id] = _seeded_generator(params.seed, self.device)

    def release(self, request_ids: Iterable[str]) -> None:
        """Forget the per-request state (seeded generators) of finished or aborted requests."""
        for request_id in request_ids:
            self._request_generators.pop(request_id, None)

    def _shared_generator(self, device: torch.device) -> torch.Generator:
        generator = self._shared_generators.get(device)
        if generator is None:
            generator = torch.Generator(device=device)
            if self._seed is None:
                generator.seed()
            else:
                generator.manual_seed(self._seed)
            self._shared_generators[device] = generator
        return generator

    def _request_generator(self, row: SamplingRow, device: torch.device) -> torch.Generator:
        # Seeded once, then kept: reseeding every step would repeat the same random number each step.
        generator = self._request_generators.get(row.request_id)
        if generator is None:  # a row sampled without add_request (the sampler used on its own)
            generator = _seeded_generator(row.params.seed if row.params.seed is not None else 0, device)
            self._request_generators[row.request_id] = generator
        return generator


def _seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded with `seed`; a seed torch rejects is the request's error, named as such."""
    generator = torch.Generator(device=device)
    try:
        generator.manual_seed(seed)
    except (RuntimeError, OverflowError, ValueError) as exc:
        raise InvalidRequestError(f"seed {seed} is not accepted by the generator: {exc}", "seed") from exc
    return generator


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """Each row's argmax (the first index of the largest value, as torch's). On CPU through numpy, whose
    vectorized argmax is ~20x torch's on one thread (16 x 151,936 floats: 0.2 vs 4.6 ms, the largest part of a
    greedy step outside llama_decode at 16 sequences). `logits` are float32 here (`sample` converts them)."""
    if logits.device.type != "cpu":
        return logits.argmax(dim=-1)
    return torch.from_numpy(np.argmax(logits.numpy(), axis=-1))


def _take(tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """`tensor[rows]`, without the copy when `rows` is every row in order (the common all-alike batch)."""
    return tensor if len(rows) == tensor.shape[0] else tensor[rows]


def _add_logit_bias(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """Add each row's logit_bias in place (B, V).

    Out-of-range ids are rejected upstream; skipping them here keeps one bad request from crashing a step.
    """
    vocab_size = logits.shape[1]
    row_index: list[int] = []
    token_index: list[int] = []
    biases: list[float] = []
    for i, row in enumerate(rows):
        for token_id, bias in row.params.logit_bias:
            if 0 <= token_id < vocab_size:
                row_index.append(i)
                token_index.append(token_id)
                biases.append(bias)
    if row_index:
        device = logits.device
        index = (torch.tensor(row_index, device=device), torch.tensor(token_index, device=device))
        logits.index_put_(index, torch.tensor(biases, device=device), accumulate=True)


def _history_index(
    histories: list[list[int]], rows: list[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, token) pairs of every token in `histories`, duplicates included; histories[j] is row rows[j]."""
    lengths = torch.tensor([len(h) for h in histories], device=device)
    row_index = torch.repeat_interleave(torch.tensor(rows, device=device), lengths)
    token_index = torch.tensor(
        list(itertools.chain.from_iterable(histories)), dtype=torch.long, device=device
    )
    return row_index, token_index


def _unique_pairs(
    row_index: torch.Tensor, token_index: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, ...]:
    """The distinct (row, token) pairs among the given ones."""
    flat = torch.unique(row_index * vocab_size + token_index)
    return flat // vocab_size, flat % vocab_size


def _apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> None:
    """Repetition, presence and frequency penalties, in place (B, V).

    Only the entries of tokens in a row's history change, so the work is O(history), not O(vocabulary).
    """
    device = logits.device
    vocab_size = logits.shape[1]
    repeated = [i for i, row in enumerate(rows) if row.params.repetition_penalty != 1.0]
    if repeated:
        histories = [rows[i].prompt_token_ids + rows[i].output_token_ids for i in repeated]
        index = _unique_pairs(*_history_index(histories, repeated, device), vocab_size)
        penalty = torch.tensor([row.params.repetition_penalty for row in rows], device=device)[index[0]]
        values = logits[index]
        logits[index] = torch.where(values > 0, values / penalty, values * penalty)

    counted = [
        i
        for i, row in enumerate(rows)
        if row.params.presence_penalty != 0.0 or row.params.frequency_penalty != 0.0
    ]
    if counted:
        index = _history_index([rows[i].output_token_ids for i in counted], counted, device)
        if index[0].numel() == 0:
            return
        presence = torch.tensor([row.params.presence_penalty for row in rows], device=device)
        frequency = torch.tensor([row.params.frequency_penalty for row in rows], device=device)
        # Accumulating one -frequency per occurrence gives -frequency * count; presence counts once per token.
        logits.index_put_(index, -frequency[index[0]], accumulate=True)
        unique = _unique_pairs(*index, vocab_size)
        logits.index_put_(unique, -presence[unique[0]], accumulate=True)


def _sample_random(logits: torch.Tensor, params: list[SamplingParams], uniform: torch.Tensor) -> torch.Tensor:
    """Sample one token per row of `logits` (n, V) with temperature > 0, using `uniform` (n,) in [0, 1)."""
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)  # (n, 1)
    token_ids = torch.empty(len(params), dtype=torch.long, device=device)

    truncated = [j for j, p in enumerate(params) if p.top_k > 0 or p.top_p < 1.0]
    if truncated:
        sub_params = [params[j] for j in truncated]
        sub_logits = _take(logits, truncated)
        sub_temperature = temperature[truncated]
        sub_uniform = uniform[truncated]
        tokens = torch.empty(len(truncated), dtype=torch.long, device=device)
        pending = list(range(len(truncated)))  # rows whose nucleus is not settled yet, as indices into `truncated`
        for candidates in (*NUCLEUS_CANDIDATES, None):  # None: sort the whole vocabulary
            chosen, covered = _sample_top(
                _take(sub_logits, pending), sub_temperature[pending], [sub_params[j] for j in pending],
                sub_uniform[pending], candidates,
            )  # fmt: skip
            done = [j for j, ok in zip(pending, covered.tolist(), strict=True) if ok]
            tokens[done] = chosen[covered]
            pending = [j for j, ok in zip(pending, covered.tolist(), strict=True) if not ok]
            if not pending:
                break
        token_ids[truncated] = tokens

    untruncated = [j for j, p in enumerate(params) if p.top_k == 0 and p.top_p >= 1.0]
    if untruncated:
        probs = torch.softmax(_take(logits, untruncated) / temperature[untruncated], dim=-1)  # (m, V)
        min_p = torch.tensor([params[j].min_p for j in untruncated], device=device).unsqueeze(1)
        if bool((min_p > 0).any()):
            probs = probs.masked_fill(probs < probs.amax(dim=-1, keepdim=True) * min_p, 0.0)
        token_ids[untruncated] = _inverse_cdf(probs, uniform[untruncated])
    return token_ids


def _sample_top(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    params: list[SamplingParams],
    uniform: torch.Tensor,
    candidates: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k, then top-p, then min-p, then one draw, among the `candidates` most likely tokens of each row.

    `logits` (n, V) are raw, `temperature` (n, 1): dividing by a positive temperature keeps the order, so the
    candidates are picked from the raw logits and only they are divided (exactly the values `logits / T` holds
    there). Only rows without top_k (their top_p mass is measured against the whole vocabulary) touch every
    column again. `candidates` None means the whole vocabulary (a full sort). Returns the token ids (n,) and
    whether each row's top-p nucleus fit in the candidates (n,) bool; rows where it did not must be redone.
    """
    device = logits.device
    vocab_size = logits.shape[1]
    top_k = [min(p.top_k, vocab_size) for p in params]
    width = vocab_size
    if candidates is not None:
        width = min(vocab_size, max(max(top_k), candidates if 0 in top_k else 0))
    if width == vocab_size:
        values, indices = logits.sort(dim=-1, descending=True)  # (n, width)
    else:
        values, indices = logits.topk(width, dim=-1)  # sorted, descending
    values = values / temperature

    has_top_k = torch.tensor([k > 0 for k in top_k], device=device)
    limit = torch.tensor([k if k > 0 else width for k in top_k], device=device).unsqueeze(1)
    values = values.masked_fill(torch.arange(width, device=device) >= limit, float("-inf"))
    # top_k rows renormalize over their k tokens; top_p-only rows measure mass against the whole vocabulary.
    log_total = values.logsumexp(dim=-1)
    whole = [i for i, k in enumerate(top_k) if k == 0]
    if whole:
        log_total[whole] = (_take(logits, whole) / _take(temperature, whole)).logsumexp(dim=-1)
    log_total = log_total.unsqueeze(1)
    probs = torch.exp(values - log_total)  # (n, width)
    cumulative = probs.cumsum(dim=-1)

    top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
    keep = (cumulative - probs < top_p) | (top_p >= 1.0)  # the first token always stays
    min_p = torch.tensor([p.min_p for p in params], device=device).unsqueeze(1)
    keep &= probs >= probs[:, :1] * min_p
    choice = _inverse_cdf(probs * keep, uniform)
    token_ids = indices.gather(1, choice.unsqueeze(1)).squeeze(1)

    covered = has_top_k | (cumulative[:, -1] >= top_p.squeeze(1))
    if width == vocab_size:
        covered = torch.ones_like(covered)  # nothing more to look at (float mass may fall a hair short of top_p)
    return token_ids, covered


def _inverse_cdf(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of non-negative `weights` (n, m) with probability proportional to the weight.

    One uniform number per row keeps the random stream of a seeded request independent of everything else, and
    a cumsum is ~20x cheaper on CPU than drawing an exponential per vocabulary entry.
    """
    cdf = weights.cumsum(dim=-1)
    total = cdf[:, -1:]
    # Stay strictly below the total so the search lands on an entry whose cdf rises, i.e. a non-zero weight.
    target = torch.minimum(uniform.unsqueeze(1) * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def _collect_logprobs(
    log_probs: torch.Tensor, token_ids: torch.Tensor, rows: Sequence[SamplingRow], logprob_rows: list[int]
) -> dict[int, TokenLogprob]:
    """The chosen token's logprob and the requested top alternatives, per row index that asked for them."""
    chosen_ids = token_ids[logprob_rows]
    chosen = log_probs.gather(1, chosen_ids.unsqueeze(1)).squeeze(1).tolist()
    max_top = max(rows[i].params.logprobs or 0 for i in logprob_rows)
    top_values: list[list[float]] = [[] for _ in logprob_rows]
    top_ids: list[list[int]] = [[] for _ in logprob_rows]
    if max_top > 0:
        values, indices = log_probs.topk(max_top, dim=-1)  # sorted, most likely first
        top_values, top_ids = values.tolist(), indices.tolist()
    result: dict[int, TokenLogprob] = {}
    for j, (i, token_id) in enumerate(zip(logprob_rows, chosen_ids.tolist(), strict=True)):
        k = rows[i].params.logprobs or 0
        top = tuple(zip(top_ids[j][:k], top_values[j][:k], strict=True))
        result[i] = TokenLogprob(token_id=token_id, logprob=chosen[j], top=top)
    return result
