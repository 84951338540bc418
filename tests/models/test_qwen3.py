"""Our Qwen3 module and safetensors loader against Hugging Face transformers as the oracle (float32)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3ForCausalLM as HFQwen3ForCausalLM

from qwen3_api.errors import ModelLoadError
from qwen3_api.models.qwen3 import Qwen3ModelConfig
from qwen3_api.models.weights import load_model
from tests.hf_models import DEEP, TINY, build_hf_model

# Logits have std ~3 with these inits; float32 reorderings of the same math stay well below this.
LOGITS_ATOL = 1e-4

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HFQwen3ForCausalLM]:
    path = tmp_path_factory.mktemp("tiny")
    return path, build_hf_model(path, TINY, seed=0)


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, HFQwen3ForCausalLM]:
    path = tmp_path_factory.mktemp("deep")
    # std 0.05: with 0.1 the residual stream grows ~50x per layer at this width
    return path, build_hf_model(path, DEEP, seed=1, init_std=0.05, max_shard_size="200MB")


def hf_logits(model: HFQwen3ForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(tokens[None]).logits[0].float()  # [T, V]


def our_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        hidden = model(tokens, torch.arange(len(tokens)))
        return model.compute_logits(hidden)  # [T, V]


def prompt(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 151936, (length,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fixture_name", ["tiny", "deep"])
def test_full_prompt_logits_match_hf(fixture_name: str, request: pytest.FixtureRequest) -> None:
    path, hf = request.getfixturevalue(fixture_name)
    model = load_model(path, dtype=torch.float32)
    tokens = prompt(23, seed=3)
    expected, got = hf_logits(hf, tokens), our_logits(model, tokens)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() < LOGITS_ATOL


def test_deep_checkpoint_is_sharded(deep: tuple[Path, HFQwen3ForCausalLM]) -> None:
    path, _ = deep
    assert (path / "model.safetensors.index.json").is_file()
    assert not (path / "model.safetensors").exists()
    assert len(list(path.glob("model-*.safetensors"))) > 1


def test_tied_head_shares_the_embedding(tiny: tuple[Path, HFQwen3ForCausalLM]) -> None:
    model = load_model(tiny[0])
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()


def test_untied_head_with_attention_bias_matches_hf(tmp_path: Path) -> None:
    hf = build_hf_model(tmp_path, TINY, seed=5, tie=False, attention_bias=True)
    model = load_model(tmp_path)
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()
    tokens = prompt(17, seed=4)
    assert (our_logits(model, tokens) - hf_logits(hf, tokens)).abs().max().item() < LOGITS_ATOL


@pytest.mark.parametrize("fixture_name", ["tiny", "deep"])
def test_bfloat16_loads_and_mostly_agrees(fixture_name: str, request: pytest.FixtureRequest) -> None:
    path, hf = request.getfixturevalue(fixture_name)
    model = load_model(path, dtype="bfloat16")
    assert model.embed_tokens.weight.dtype == torch.bfloat16
    tokens = prompt(32, seed=6)
    expected, got = hf_logits(hf, tokens), our_logits(model, tokens)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    agreement = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agreement >= 0.8


def test_missing_tensor_raises(tiny: tuple[Path, HFQwen3ForCausalLM], tmp_path: Path) -> None:
    shutil.copy(tiny[0] / "config.json", tmp_path / "config.json")
    tensors = load_file(tiny[0] / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.self_attn\.k_norm\.weight"):
        load_model(tmp_path)


def test_untied_config_without_head_raises(tiny: tuple[Path, HFQwen3ForCausalLM], tmp_path: Path) -> None:
    shutil.copy(tiny[0] / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((tiny[0] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(ModelLoadError, match="lm_head.weight"):
        load_model(tmp_path)


def test_shape_mismatch_raises(tiny: tuple[Path, HFQwen3ForCausalLM], tmp_path: Path) -> None:
    shutil.copy(tiny[0] / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((tiny[0] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    with pytest.raises(ModelLoadError, match="shape"):
        load_model(tmp_path)


def test_no_checkpoint_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path)


def test_config_reads_rope_theta_from_either_place() -> None:
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, head_dim=4)
    assert Qwen3ModelConfig.from_dict({**base, "rope_theta": 5e5}).rope_theta == 5e5
    nested = {**base, "rope_parameters": {"rope_type": "default", "rope_theta": 2e4}}
    assert Qwen3ModelConfig.from_dict(nested).rope_theta == 2e4
    with pytest.raises(ModelLoadError, match="RoPE"):
        Qwen3ModelConfig.from_dict({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ModelLoadError, match="model_type"):
        Qwen3ModelConfig.from_dict({**base, "model_type": "llama"})


def test_long_prompt_matches_hf(tiny: tuple[Path, HFQwen3ForCausalLM]) -> None:
    """Past Linear.SMALL_BATCH_ROWS rows the plain x @ W^T path runs; it must agree too."""
    path, hf = tiny
    tokens = prompt(150, seed=8)
    got, expected = our_logits(load_model(path), tokens), hf_logits(hf, tokens)
    assert (got - expected).abs().max().item() < LOGITS_ATOL
