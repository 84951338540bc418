"""Weight-only int8 quantization of a loaded `Qwen3ForCausalLM`: int8 weights, float activations.

Each weight row (output channel) is stored as int8 with one scale: `weight ≈ qweight * scale[:, None]`,
symmetric, scale = max|row| / 127. It stores a quarter of the float32 bytes; on a 2-core AVX2 CPU the kernel
is compute-bound rather than bandwidth-bound, but still beats bfloat16 (whose matmul also converts every weight).
Activations, norms and the KV cache stay in the model dtype.

What is quantized: every linear layer of the decoder layers, the LM head and the token embedding. The
embedding rows are the head's output channels, so a tied model keeps one int8 matrix for both.

Kernels (measured on a 2-core AVX2 host, torch 2.13, one thread, Qwen3-4B shapes; ms per call):

    layer [N x K]          rows   float32 W@x^T   bfloat16   int8 kernel (bf16 x)
    gate_up 19456 x 2560     1         9.1          9.9          5.5
    gate_up 19456 x 2560     8        30.3         74.0         27.4
    down     2560 x 9728     1         3.9          4.7          2.0
    down     2560 x 9728     8        15.6         36.1          9.1
    head   151936 x 2560     1        74.1         75.8         61.3
    head   151936 x 2560     8       255.6        580.1        156.3

`torch._weight_int8pack_mm` is the kernel; it is fast only for bfloat16/float16 activations (its float32 path
was 5-10x slower than plain float32), so float32 activations are cast to bfloat16 around it. With many float32
rows (prefill) dequantizing slices of the weight to float32 and using sgemm wins (gate_up, 256 rows: 437 ms vs
643 ms for the kernel), and that plain-torch path is also what runs on CUDA, where the kernel does not exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from qwen3_api.models.qwen3 import Qwen3ForCausalLM

logger = logging.getLogger(__name__)

QuantizationMethod = Literal["none", "int8"]
QUANTIZATION_METHODS: tuple[QuantizationMethod, ...] = get_args(QuantizationMethod)

_INT8_MAX = 127
# Every matrix of a decoder layer (q/k/v and gate/up are fused in our model).
_LAYER_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")
# Bounds the temporary float copy made while quantizing or dequantizing: 16M elements = 64 MiB of float32.
_CHUNK_ELEMENTS = 16 * 1024 * 1024


def quantize_per_channel(weight: torch.Tensor, scale_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] (any float dtype) -> (int8 [out, in], scales [out] in `scale_dtype`), symmetric.

    The int8 values are rounded against the scale as stored (in `scale_dtype`), so a bfloat16 scale's own
    rounding does not add error on top of the int8 rounding.
    """
    rows, cols = weight.shape
    qweight = torch.empty(rows, cols, dtype=torch.int8, device=weight.device)
    scales = torch.empty(rows, dtype=scale_dtype, device=weight.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, chunk):
        block = weight[start : start + chunk].float()  # [chunk, in]
        # An all-zero row would give scale 0 and 0/0 below; any positive scale stores it exactly.
        scale = (block.abs().amax(dim=1) / _INT8_MAX).clamp(min=1e-12).to(scale_dtype)
        scales[start : start + chunk] = scale
        qweight[start : start + chunk] = (
            torch.round(block / scale.float()[:, None]).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
        )
    return qweight, scales


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    # Parameters rather than buffers: `module.to(device)` moves a shared Parameter once and keeps it shared,
    # whereas a buffer shared by two modules would be copied twice (the tied head and embedding).
    return nn.Parameter(tensor, requires_grad=False)


class Int8Linear(nn.Module):
    """A linear layer with per-output-channel int8 weights; input and output stay in the scales' dtype."""

    # Above this many float32 rows, dequantize-and-sgemm beats the int8 kernel on bfloat16-cast input.
    KERNEL_MAX_FLOAT32_ROWS = 128
    # The CPU kernel vectorises over the input dim in steps of 8 and crashes (SIGSEGV) on other sizes.
    KERNEL_IN_FEATURES_MULTIPLE = 8

    def __init__(self, qweight: nn.Parameter, scales: nn.Parameter, bias: nn.Parameter | None = None) -> None:
        super().__init__()
        if qweight.dtype != torch.int8 or qweight.dim() != 2:
            raise ValueError(f"qweight must be a 2-D int8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
        if scales.shape != (qweight.shape[0],):
            raise ValueError(f"scales must have shape ({qweight.shape[0]},), got {tuple(scales.shape)}")
        self.out_features, self.in_features = qweight.shape
        self.qweight: nn.Parameter = qweight  # [out, in] int8
        self.scales: nn.Parameter = scales  # [out], the activation dtype
        self.bias: nn.Parameter | None = bias

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize an `nn.Linear`; scales and bias keep the float weight's dtype and device."""
        qweight, scales = quantize_per_channel(linear.weight.detach(), linear.weight.dtype)
        bias = None if linear.bias is None else _frozen(linear.bias.detach())
        return cls(_frozen(qweight), _frozen(scales), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out] in x's dtype."""
        rows = x.reshape(-1, self.in_features)  # [M, in]
        if self._use_kernel(rows):
            # bfloat16 in, bfloat16 out for float32 models: the kernel's float32 path is the slow one.
            kernel_dtype = torch.bfloat16 if rows.dtype == torch.float32 else rows.dtype
            out = torch._weight_int8pack_mm(
                rows.to(kernel_dtype).contiguous(), self.qweight, self.scales.to(kernel_dtype)
            ).to(x.dtype)
        else:
            out = dequantized_matmul(rows, self.qweight, self.scales)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def _use_kernel(self, rows: torch.Tensor) -> bool:
        return (
            rows.device.type == "cpu"
            and hasattr(torch, "_weight_int8pack_mm")
            and self.in_features % self.KERNEL_IN_FEATURES_MULTIPLE == 0
            and rows.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and (rows.dtype != torch.float32 or rows.shape[0] <= self.KERNEL_MAX_FLOAT32_ROWS)
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def dequantized_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [M, in] @ (qweight * scales[:, None])^T with plain torch ops, any device.

    The weight is converted a slice of output rows at a time so the float copy stays small; the scale is
    applied to the output columns, which is the same product with M x out multiplies instead of out x in.
    """
    scales = scales.to(x.dtype)
    chunk = max(1, _CHUNK_ELEMENTS // qweight.shape[1])
    parts = [
        F.linear(x, qweight[start : start + chunk].to(x.dtype)) * scales[start : start + chunk]
        for start in range(0, qweight.shape[0], chunk)
    ]  # each [M, chunk]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class Int8Embedding(nn.Module):
    """Token embedding read from int8 rows, dequantized per looked-up row (may share the head's tensors)."""

    def __init__(self, qweight: nn.Parameter, scales: nn.Parameter) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.qweight: nn.Parameter = qweight  # [V, H] int8
        self.scales: nn.Parameter = scales  # [V], the activation dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> [T, H] in the scales' dtype (the model's activation dtype)."""
        return self.qweight[input_ids].to(self.scales.dtype) * self.scales[input_ids].unsqueeze(-1)


def quantize_model(model: Qwen3ForCausalLM, method: QuantizationMethod) -> Qwen3ForCausalLM:
    """Quantize `model` in place (and return it): its float weights are replaced and freed as it goes.

    Quantize after the model has its final dtype and device: scales are kept in the float weights' dtype, which
    becomes the activation dtype. Peak memory is the float model plus one layer's int8 copy.
    """
    if method not in QUANTIZATION_METHODS:
        raise ValueError(f"unknown quantization {method!r}; choose one of {', '.join(QUANTIZATION_METHODS)}")
    if method == "none":
        return model
    before = weight_bytes(model).total
    quantized = 0
    with torch.no_grad():
        for layer in model.layers:
            for path in _LAYER_LINEARS:
                parent_path, _, name = path.rpartition(".")
                parent = layer.get_submodule(parent_path)
                module = parent.get_submodule(name)
                if isinstance(module, nn.Linear):  # already quantized layers are left alone
                    parent.add_module(name, Int8Linear.from_float(module))
                    quantized += 1
        quantized += _quantize_head_and_embedding(model)
    after = weight_bytes(model).total
    logger.info(
        "quantized %d weight matrices to int8: weights %.2f GiB -> %.2f GiB", quantized, before / 2**30,
        after / 2**30,
    )
    return model


def _quantize_head_and_embedding(model: Qwen3ForCausalLM) -> int:
    """Quantize the LM head and the embedding, once for both when tied; returns matrices quantized."""
    head, embedding = model.lm_head, model.embed_tokens
    if not isinstance(head, nn.Linear) or not isinstance(embedding, nn.Embedding):
        return 0
    quantized_head = Int8Linear.from_float(head)
    if head.weight is embedding.weight:
        quantized_embedding = Int8Embedding(quantized_head.qweight, quantized_head.scales)
    else:
        qweight, scales = quantize_per_channel(embedding.weight.detach(), embedding.weight.dtype)
        quantized_embedding = Int8Embedding(_frozen(qweight), _frozen(scales))
    del head, embedding  # the last references to the float matrices once the modules are swapped below
    # add_module swaps the submodules; plain assignment would fight the attributes' declared float types
    model.add_module("lm_head", quantized_head)
    model.add_module("embed_tokens", quantized_embedding)
    return 1 if quantized_embedding.qweight is quantized_head.qweight else 2


@dataclass(frozen=True)
class WeightBytes:
    """Memory held by a model's weights, and how much of it one decode step reads."""

    total: int  # every parameter and buffer, shared ones once
    int8: int  # of which int8 weights (their scales are counted in total only)
    per_decode_token: int  # all weights except the embedding table, plus one embedding row

    def decode_tokens_per_s_limit(self, bandwidth_gb_s: float) -> float:
        """Upper bound on single-sequence decode speed from read bandwidth (GB/s, 10^9 bytes)."""
        return bandwidth_gb_s * 1e9 / self.per_decode_token


def weight_bytes(model: Qwen3ForCausalLM) -> WeightBytes:
    """Count the model's weight bytes, quantized or not; tied tensors are counted once."""
    seen: set[int] = set()
    total = int8 = 0
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        size = tensor.numel() * tensor.element_size()
        total += size
        int8 += size if tensor.dtype == torch.int8 else 0
    # The step gathers a few embedding rows, not the table, unless the head reads the same tensor in full.
    head_ptrs = {t.data_ptr() for t in model.lm_head.parameters()}
    table = [t for t in model.embed_tokens.parameters() if t.data_ptr() not in head_ptrs]
    table_bytes = sum(t.numel() * t.element_size() for t in table)
    row_bytes = sum(t[0].numel() * t.element_size() for t in table)
    return WeightBytes(total=total, int8=int8, per_decode_token=total - table_bytes + row_bytes)
