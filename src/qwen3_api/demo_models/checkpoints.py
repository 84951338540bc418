"""Complete model directories with the real Qwen3 tokenizer and seeded random weights in real Qwen3 shapes.

Random weights make garbage text, so correctness is proven by parity with HF transformers, not by reading output.
Built models are cached (one directory per shape/seed/dtype/init) so tests and demos build each once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from platformdirs import user_cache_dir

logger = logging.getLogger(__name__)

VOCAB_SIZE = 151936
END_TOKEN_IDS = (151645, 151643)


@dataclass(frozen=True)
class ModelShape:
    """The shape-defining fields of a Qwen3 config."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int


SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(64, 128, 2, 4, 2, 16),
    "0.6b": ModelShape(1024, 3072, 28, 16, 8, 128),
    "4b": ModelShape(2560, 9728, 36, 32, 8, 128),
}
DTYPES = ("float32", "bfloat16", "float16")


def qwen3_config(shape: ModelShape, dtype: str, num_layers: int | None = None) -> dict[str, object]:
    """A Qwen3 config.json for `shape`, with the fields every real Qwen3 checkpoint shares."""
    fields = asdict(shape)
    if num_layers is not None:
        fields["num_hidden_layers"] = num_layers
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": VOCAB_SIZE,
        **fields,
        "hidden_act": "silu",
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "torch_dtype": dtype,
    }


GENERATION_CONFIG = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "eos_token_id": list(END_TOKEN_IDS),
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.95,
    "top_k": 20,
}


def default_cache_root() -> Path:
    """Where built test models live: $QWEN3_API_TEST_MODEL_CACHE, else the user cache dir."""
    override = os.environ.get("QWEN3_API_TEST_MODEL_CACHE")
    return Path(override) if override else Path(user_cache_dir("qwen3-api")) / "test-models"


def model_dir_name(shape: str, seed: int, dtype: str, init_std: float, num_layers: int | None) -> str:
    layers = f"-l{num_layers}" if num_layers is not None else ""
    return f"qwen3-{shape}{layers}-{dtype}-seed{seed}-std{init_std:g}"


def _random_state_dict(config: dict[str, object], dtype: str, seed: int, init_std: float):  # type: ignore[no-untyped-def]
    """Seeded random tensors named as in an HF Qwen3 checkpoint: matrices ~ N(0, init_std), norms = 1."""
    import torch

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(seed)
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])  # type: ignore[call-overload]
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])  # type: ignore[call-overload]
    head_dim = int(config["head_dim"])  # type: ignore[call-overload]

    def matrix(rows: int, cols: int) -> torch.Tensor:
        # Drawn in float32 then cast, so the same seed gives the same model in every dtype.
        return torch.randn(rows, cols, generator=generator).mul_(init_std).to(torch_dtype)

    def ones(n: int) -> torch.Tensor:
        return torch.ones(n, dtype=torch_dtype)

    tensors = {"model.embed_tokens.weight": matrix(VOCAB_SIZE, hidden)}
    for i in range(int(config["num_hidden_layers"])):  # type: ignore[call-overload]
        p = f"model.layers.{i}."
        tensors.update(
            {
                p + "self_attn.q_proj.weight": matrix(heads * head_dim, hidden),
                p + "self_attn.k_proj.weight": matrix(kv_heads * head_dim, hidden),
                p + "self_attn.v_proj.weight": matrix(kv_heads * head_dim, hidden),
                p + "self_attn.o_proj.weight": matrix(hidden, heads * head_dim),
                p + "self_attn.q_norm.weight": ones(head_dim),
                p + "self_attn.k_norm.weight": ones(head_dim),
                p + "mlp.gate_proj.weight": matrix(inter, hidden),
                p + "mlp.up_proj.weight": matrix(inter, hidden),
                p + "mlp.down_proj.weight": matrix(hidden, inter),
                p + "input_layernorm.weight": ones(hidden),
                p + "post_attention_layernorm.weight": ones(hidden),
            }
        )
    tensors["model.norm.weight"] = ones(hidden)
    return tensors


def _save_sharded(tensors: dict, out: Path, max_shard_bytes: int) -> None:  # type: ignore[type-arg]
    """Write safetensors like HF does: one file, or shards plus model.safetensors.index.json."""
    from safetensors.torch import save_file

    shards: list[dict] = [{}]  # type: ignore[type-arg]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        file_name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file_name), metadata={"format": "pt"})
        weight_map.update({name: file_name for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def build_test_model(
    out_dir: Path,
    shape: str = "tiny",
    seed: int = 0,
    dtype: str = "float32",
    init_std: float = 0.02,
    num_layers: int | None = None,
    max_shard_bytes: int = 4 * 1024**3,
) -> Path:
    """Write a complete HF-style model directory (config, generation config, tokenizer, safetensors)."""
    from qwen3_api.demo_models.tokenizer import build_qwen3_tokenizer

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and rename at the end, so a crash or a concurrent build never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        config = qwen3_config(SHAPES[shape], dtype, num_layers)
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        (staging / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
        build_qwen3_tokenizer().save_pretrained(str(staging))
        logger.info("building random %s weights (%s, seed %d)", shape, dtype, seed)
        _save_sharded(_random_state_dict(config, dtype, seed, init_std), staging, max_shard_bytes)
        if out_dir.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def cached_test_model(
    shape: str = "tiny",
    seed: int = 0,
    dtype: str = "float32",
    init_std: float = 0.02,
    num_layers: int | None = None,
    cache_root: Path | None = None,
) -> Path:
    """The cached test model directory for these settings, built on first use."""
    root = cache_root or default_cache_root()
    target = root / model_dir_name(shape, seed, dtype, init_std, num_layers)
    if (target / "config.json").exists():
        return target
    return build_test_model(target, shape=shape, seed=seed, dtype=dtype, init_std=init_std, num_layers=num_layers)


def parse_test_model_spec(spec: str) -> dict[str, object]:
    """Parse `test:SHAPE[:key=value,...]`, e.g. `test:tiny` or `test:0.6b:dtype=bfloat16,seed=1`.

    `gguf=F32|F16|Q8_0|Q4_0` asks for the model as a GGUF file of that type (see `qwen3_api.models.gguf`).
    """
    from qwen3_api.demo_models.gguf import parse_gguf_type

    parts = spec.split(":", 2)
    if parts[0] != "test" or len(parts) < 2 or parts[1] not in SHAPES:
        raise ValueError(f"test model spec must be test:<{'|'.join(SHAPES)}>[:key=value,...], got {spec!r}")
    options: dict[str, object] = {"shape": parts[1]}
    casts: dict[str, Callable[[str], object]] = {
        "seed": int, "dtype": str, "init_std": float, "num_layers": int, "gguf": parse_gguf_type,
    }  # fmt: skip
    for item in parts[2].split(",") if len(parts) == 3 and parts[2] else []:
        key, _, value = item.partition("=")
        if key not in casts:
            raise ValueError(f"unknown test model option {key!r}; known: {', '.join(casts)}")
        options[key] = casts[key](value)
    return options
