"""Random HF Qwen3 checkpoints for parity tests: the oracle side (HF transformers) of model tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen3Config
from transformers import Qwen3ForCausalLM as HFQwen3ForCausalLM

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)
DEEP = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128)


def build_hf_model(path: Path, shape: dict, *, seed: int, tie: bool = True, init_std: float = 0.1,
                   max_shard_size: str | None = None, **extra: object) -> HFQwen3ForCausalLM:
    """A seeded random HF Qwen3 saved to `path`; norm weights randomised too, so a skipped one shows."""
    config = Qwen3Config(vocab_size=151936, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=tie,
                         initializer_range=init_std, **shape, **extra)
    torch.manual_seed(seed)
    model = HFQwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0.0, init_std)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return model
