"""Qwen3 as a plain `nn.Module`: the model only, with attention over the KV cache delegated to a backend.

The model works on a flat batch: all new tokens of all sequences in one `[T]` tensor, so every linear layer is
one matmul for the whole step. Where each token's K/V go and which keys it sees is the attention backend's job
(see `qwen3_api.executors.attention`); the model itself never knows about sequences or the cache.

Shapes in comments: T = new tokens in the step, H = hidden size, Hq / Hkv = query / key-value heads,
D = head dim, I = intermediate size, V = vocab size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from qwen3_api.errors import ModelLoadError


@dataclass(frozen=True)
class Qwen3ModelConfig:
    """The architecture fields of a Qwen3 `config.json` that the model needs; validated on construction."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    max_position_embeddings: int = 40_960

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Qwen3ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError("rope_theta and rms_norm_eps must be positive")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Qwen3ModelConfig:
        """Build from a parsed HF `config.json`, refusing features this model does not implement."""
        model_type = raw.get("model_type", "qwen3")
        if model_type != "qwen3":
            raise ModelLoadError(f"expected a Qwen3 checkpoint (model_type 'qwen3'), got {model_type!r}")
        if raw.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"unsupported hidden_act {raw['hidden_act']!r}; Qwen3 uses 'silu'")
        if raw.get("use_sliding_window", False):
            raise ModelLoadError("sliding-window attention (use_sliding_window: true) is not supported")
        try:
            num_heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            return cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=num_heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or num_heads),
                head_dim=int(raw.get("head_dim") or hidden // num_heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=_rope_theta(raw),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                attention_bias=bool(raw.get("attention_bias", False)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 40_960)),
            )
        except KeyError as exc:
            raise ModelLoadError(f"config.json is missing the required field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(f"config.json has an invalid value: {exc}") from exc

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> Qwen3ModelConfig:
        """Read `<model_dir>/config.json`."""
        path = Path(model_dir) / "config.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelLoadError(f"no config.json in {model_dir}; is it a Hugging Face model?") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(raw)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim


def _rope_theta(raw: dict[str, Any]) -> float:
    """rope_theta is top-level (transformers 4.x) or in `rope_parameters` (5.x); only plain RoPE is built."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        # Silently running YaRN/linear-scaled checkpoints with plain RoPE would give wrong answers past 32k.
        raise ModelLoadError(f"unsupported RoPE type {rope_type!r}; only the default rotary embedding exists")
    theta = params.get("rope_theta", raw.get("rope_theta", 1_000_000.0))
    return float(theta)


class AttentionBackend(Protocol):
    """Stores the step's new K/V for layer `layer_idx` and attends each query over its sequence's keys."""

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, Hq, D], k/v: [T, Hkv, D] (rope applied) -> [T, Hq, D]."""
        ...


def causal_attention(layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Backend for one sequence with no cache: all T tokens are the whole sequence, attended causally."""
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
    )  # [Hq, T, D]
    return out.transpose(0, 1)


class Linear(nn.Linear):
    """`nn.Linear` that, for few float32 rows on CPU, multiplies as (W @ x^T)^T.

    MKL's sgemm is slow for x @ W^T with a short x (decode batches): on our 2-core EPYC host the 151k-row
    LM head took ~110 ms at 8 rows vs ~58 ms with the weight as the left operand, and layer projections
    gained up to 1.5x at 16-64 rows; from ~256 rows the two are even. Same math, other summation order.
    Quantized linears replace these modules wholesale, so nothing here is load-bearing for them.
    """

    SMALL_BATCH_ROWS = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() == 2
            and x.shape[0] <= self.SMALL_BATCH_ROWS
            and x.device.type == "cpu"
            and x.dtype == torch.float32
        ):
            out = torch.mm(self.weight, x.t()).t()  # [N, out] as a transposed view of [out, N]
            if self.bias is not None:
                out = out + self.bias
            return out.contiguous()
        return super().forward(x)


class RMSNorm(nn.Module):
    """RMS norm over the last dim; computed in float32 like the reference, scaled in the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class RotaryEmbedding(nn.Module):
    """Neox-style ("rotate half") RoPE; cos/sin are computed per step from the absolute positions."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # A plain attribute, not a buffer: the model is often built on the meta device, then materialised,
        # which would leave a buffer uninitialised. An explicit device keeps it real under the meta context.
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device="cpu") / head_dim
        self.inv_freq = 1.0 / (theta**exponents)  # [D/2]

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: [T] -> (cos, sin), each [T, 1, D/2] in `dtype` (broadcast over heads)."""
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None] * self.inv_freq  # [T, D/2], float32 as in the reference
        return freqs.cos().to(dtype)[:, None, :], freqs.sin().to(dtype)[:, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, D]; rotates the pairs (i, i + D/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Qwen3Attention(nn.Module):
    """Grouped-query attention with per-head RMSNorm on q and k (before RoPE); q, k and v in one matmul."""

    def __init__(self, config: Qwen3ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size, self.kv_size = config.q_size, config.kv_size
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=config.attention_bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: AttentionBackend
    ) -> torch.Tensor:
        """x: [T, H] -> [T, H]."""
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.view(-1, self.num_heads, self.head_dim))  # [T, Hq, D]
        k = self.k_norm(k.view(-1, self.num_kv_heads, self.head_dim))  # [T, Hkv, D]
        v = v.view(-1, self.num_kv_heads, self.head_dim)  # [T, Hkv, D]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(self.layer_idx, q, k, v)  # [T, Hq, D]
        return self.o_proj(out.reshape(-1, self.q_size))


class Qwen3MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up in one matmul."""

    def __init__(self, config: Qwen3ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)  # [T, I] each
        return self.down_proj(F.silu(gate) * up)


class Qwen3DecoderLayer(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: Qwen3ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Qwen3Attention(config, layer_idx)
        self.mlp = Qwen3MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: AttentionBackend
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3ForCausalLM(nn.Module):
    """Qwen3 decoder with its LM head. `forward` returns final hidden states; `compute_logits` the head.

    The head is separate so the runner can apply it only to the rows whose logits are needed: with a
    151k-token vocabulary it is the largest matmul of a decode step.
    """

    def __init__(self, config: Qwen3ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the LM head when the config says so (again after materialising)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionBackend = causal_attention
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> final-normed hidden states [T, H].

        The default backend treats the tokens as one whole sequence; pass a paged backend for real serving.
        """
        x = self.embed_tokens(input_ids)  # [T, H]
        cos, sin = self.rotary(positions, x.dtype)  # computed once, shared by every layer
        for layer in self.layers:
            x = layer(x, cos, sin, attention)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, H] -> float32 logits [N, V]."""
        return self.lm_head(hidden).float()
