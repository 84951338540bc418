"""Load a Hugging Face Qwen3 safetensors checkpoint into `Qwen3ForCausalLM` by tensor name.

HF stores q/k/v and gate/up as separate tensors; our model fuses them, so each HF tensor is copied into a
row slice of the fused weight. Every expected slice must be filled exactly once, or loading fails with
`ModelLoadError` naming what is missing or mismatched.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from qwen3_api.errors import ModelLoadError
from qwen3_api.models.qwen3 import Qwen3ForCausalLM, Qwen3ModelConfig

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """Accept a torch dtype or its name ("float32", "bfloat16", "float16")."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"unsupported dtype {dtype!r}; use float32, bfloat16 or float16")


@dataclass(frozen=True)
class _Target:
    """Where one HF tensor goes: a parameter of our model, rows [start, start + rows) of it."""

    param_name: str
    start: int = 0
    rows: int | None = None  # None: the whole parameter


def _checkpoint_layout(config: Qwen3ModelConfig) -> dict[str, _Target]:
    """Every HF tensor name we expect, mapped to its place in our (fused) parameters."""
    q, kv, inter = config.q_size, config.kv_size, config.intermediate_size
    layout = {
        "model.embed_tokens.weight": _Target("embed_tokens.weight"),
        "model.norm.weight": _Target("norm.weight"),
    }
    if not config.tie_word_embeddings:
        layout["lm_head.weight"] = _Target("lm_head.weight")
    for i in range(config.num_hidden_layers):
        hf, ours = f"model.layers.{i}", f"layers.{i}"
        fused = {
            "self_attn.q_proj": ("self_attn.qkv_proj", 0, q),
            "self_attn.k_proj": ("self_attn.qkv_proj", q, kv),
            "self_attn.v_proj": ("self_attn.qkv_proj", q + kv, kv),
            "mlp.gate_proj": ("mlp.gate_up_proj", 0, inter),
            "mlp.up_proj": ("mlp.gate_up_proj", inter, inter),
        }
        for hf_name, (our_name, start, rows) in fused.items():
            layout[f"{hf}.{hf_name}.weight"] = _Target(f"{ours}.{our_name}.weight", start, rows)
            if config.attention_bias and hf_name.startswith("self_attn"):
                layout[f"{hf}.{hf_name}.bias"] = _Target(f"{ours}.{our_name}.bias", start, rows)
        for name in ("self_attn.o_proj", "mlp.down_proj", "self_attn.q_norm", "self_attn.k_norm",
                     "input_layernorm", "post_attention_layernorm"):
            layout[f"{hf}.{name}.weight"] = _Target(f"{ours}.{name}.weight")
        if config.attention_bias:
            layout[f"{hf}.self_attn.o_proj.bias"] = _Target(f"{ours}.self_attn.o_proj.bias")
    return layout


def _shard_files(model_dir: Path) -> dict[str, Path]:
    """Map each tensor name to the safetensors file holding it (single file or sharded index)."""
    single, index = model_dir / "model.safetensors", model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"cannot read the shard index {index}: {exc}") from exc
        return {name: model_dir / file for name, file in weight_map.items()}
    if single.is_file():
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}  # noqa: SIM118 - safe_open is not iterable, only .keys()
    raise ModelLoadError(
        f"no model.safetensors or model.safetensors.index.json in {model_dir}; "
        "only safetensors checkpoints are supported"
    )


def load_weights(model: Qwen3ForCausalLM, model_dir: str | Path) -> None:
    """Copy every tensor of the checkpoint in `model_dir` into `model` (converting dtype and device)."""
    model_dir = Path(model_dir)
    layout = _checkpoint_layout(model.config)
    files = _shard_files(model_dir)
    missing = sorted(set(layout) - set(files))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(f"checkpoint in {model_dir} is missing {len(missing)} tensor(s): {shown}")
    ignored = sorted(set(files) - set(layout))
    if ignored:
        # e.g. a saved lm_head.weight in a tied checkpoint, or rotary inv_freq buffers in old exports
        logger.warning("ignoring %d unexpected tensor(s) in %s, e.g. %s", len(ignored), model_dir, ignored[0])

    params = dict(model.named_parameters(remove_duplicate=False))
    by_file: dict[Path, list[str]] = {}
    for name in layout:
        by_file.setdefault(files[name], []).append(name)
    with torch.no_grad():
        for path, names in by_file.items():
            if not path.is_file():
                raise ModelLoadError(f"shard {path.name} listed in the index is missing from {model_dir}")
            with safe_open(path, framework="pt") as f:
                for name in names:
                    _copy_tensor(params, layout[name], name, f.get_tensor(name))


def _copy_tensor(
    params: dict[str, torch.nn.Parameter], target: _Target, hf_name: str, tensor: torch.Tensor
) -> None:
    """Copy one checkpoint tensor into its (slice of a) parameter, checking the shape first."""
    dest: torch.Tensor = params[target.param_name]
    if target.rows is not None:
        dest = dest[target.start : target.start + target.rows]
    if tensor.shape != dest.shape:
        raise ModelLoadError(
            f"tensor {hf_name} has shape {tuple(tensor.shape)}, but the config implies {tuple(dest.shape)}; "
            "does config.json belong to these weights?"
        )
    dest.copy_(tensor)


def load_model(
    model_dir: str | Path, dtype: torch.dtype | str = torch.float32, device: torch.device | str = "cpu"
) -> Qwen3ForCausalLM:
    """Build Qwen3 from a HF folder (config.json + safetensors) in `dtype` on `device`, in eval mode."""
    config = Qwen3ModelConfig.from_dir(model_dir)
    dtype = resolve_dtype(dtype)
    # Build on meta so no memory is spent on a random init, then allocate once in the target dtype and device.
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    if config.tie_word_embeddings:
        # to_empty would give the head its own copy of the vocab matrix; drop it so that is allocated once
        model.lm_head.weight = torch.nn.Parameter(torch.empty(0, device="meta"))
    model = model.to(dtype=dtype).to_empty(device=device)
    model.tie_weights()
    load_weights(model, model_dir)
    return model.eval().requires_grad_(False)
