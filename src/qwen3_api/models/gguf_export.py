"""Write a Qwen3 safetensors checkpoint as a GGUF file with the `gguf` package alone (no llama.cpp checkout, no
convert script).

The file carries what llama.cpp needs to run a Qwen3 and to tokenize like the HF tokenizer: the qwen3.*
hyper-parameters, the byte-level BPE vocabulary padded to the embedding rows, token types, merges, special ids and
the chat template. Tensors are streamed one at a time (safetensors -> convert -> file), so even the 4b shape is
written without holding the model in memory. K-quants are made from such a file by llama.cpp's own quantizer
(`models.gguf_convert`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

logger = logging.getLogger(__name__)

GGUFType = Literal["F32", "F16", "BF16", "Q8_0", "Q4_0"]
GGUF_TYPES: tuple[str, ...] = get_args(GGUFType)
# Q8_0 and Q4_0 pack 32 weights per block along each row (the input dimension).
QUANT_BLOCK = 32


def parse_gguf_type(name: str) -> GGUFType:
    """`name` as one of GGUF_TYPES, case-insensitively; ValueError otherwise."""
    upper = name.upper()
    if upper not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {name!r}; choose one of {', '.join(GGUF_TYPES)}")
    return upper  # type: ignore[return-value]


def _looks_special(text: str) -> bool:
    # As llama.cpp's convert_hf_to_gguf.py decides: <|...|> markers are control tokens even when the HF tokenizer
    # does not flag them special (Qwen3's <|fim_*|>, <|repo_name|>, <|file_sep|>).
    return text.startswith("<|") and text.endswith("|>")


def _read_chat_template(model_dir: Path) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    config_path = model_dir / "tokenizer_config.json"
    template = json.loads(config_path.read_text()).get("chat_template") if config_path.exists() else None
    return template if isinstance(template, str) else None


def _add_tokenizer(writer: Any, model_dir: Path, config: dict[str, Any]) -> None:
    """The Qwen3 tokenizer as llama.cpp's gpt2/qwen2 BPE: tokens (padded), types, merges, special ids, template."""
    import gguf

    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    model = tokenizer["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{model_dir}: expected a byte-level BPE tokenizer, found {model.get('type')!r}")
    vocab_size = int(config["vocab_size"])
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for text, token_id in model["vocab"].items():
        tokens[token_id], types[token_id] = text, int(gguf.TokenType.NORMAL)
    added_ids = {}
    for added in tokenizer["added_tokens"]:
        token_id, text = int(added["id"]), added["content"]
        special = added["special"] or _looks_special(text)
        tokens[token_id] = text
        types[token_id] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        added_ids[text] = token_id
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    tokenizer_config_path = model_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text()) if tokenizer_config_path.exists() else {}
    generation_path = model_dir / "generation_config.json"
    generation = json.loads(generation_path.read_text()) if generation_path.exists() else {}

    def token_id_of(name: str) -> int | None:
        value = tokenizer_config.get(name)
        text = value.get("content") if isinstance(value, dict) else value
        return added_ids.get(text) if isinstance(text, str) else None

    def first_of(*values: Any) -> int | None:
        found = next((v for v in values if v is not None), None)
        return int(found[0] if isinstance(found, list) else found) if found is not None else None

    # eos is the chat turn's end (<|im_end|>), as in the tokenizer config and real Qwen3 GGUFs; readers add the
    # other end tokens (generation_config's list) themselves.
    eos = first_of(token_id_of("eos_token"), config.get("eos_token_id"), generation.get("eos_token_id"))
    bos = first_of(config.get("bos_token_id"), generation.get("bos_token_id"))
    pad = first_of(token_id_of("pad_token"), generation.get("pad_token_id"))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if eos is not None:
        writer.add_eos_token_id(eos)
    if bos is not None:
        writer.add_bos_token_id(bos)
    if pad is not None:
        writer.add_pad_token_id(pad)
    # Qwen3 prompts start without BOS; llama.cpp would prepend one otherwise.
    writer.add_add_bos_token(False)
    template = _read_chat_template(model_dir)
    if template:
        writer.add_chat_template(template)
    # The model's sampling defaults travel as general.sampling.* (what llama.cpp's convert script writes too).
    if generation.get("temperature") is not None:
        writer.add_sampling_temp(float(generation["temperature"]))
    if generation.get("top_p") is not None:
        writer.add_sampling_top_p(float(generation["top_p"]))
    if generation.get("top_k") is not None:
        writer.add_sampling_top_k(int(generation["top_k"]))


def _add_hyperparameters(writer: Any, config: dict[str, Any], qtype: GGUFType, name: str) -> None:
    import gguf

    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    file_type = {
        "F32": gguf.LlamaFileType.ALL_F32,
        "F16": gguf.LlamaFileType.MOSTLY_F16,
        "BF16": gguf.LlamaFileType.MOSTLY_BF16,
        "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    }[qtype]
    writer.add_name(name)
    writer.add_file_type(int(file_type))
    if qtype in ("Q8_0", "Q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config["num_key_value_heads"]))
    # llama.cpp defaults key/value length to embedding/heads, which is wrong for Qwen3 (head_dim 128 everywhere).
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_freq_base(float(config["rope_theta"]))
    writer.add_vocab_size(int(config["vocab_size"]))


def _safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors")
    return files


def _tensor_headers(files: list[Path]) -> Iterator[tuple[str, list[int], Path]]:
    """(name, shape, file) of every tensor, read from the safetensors headers without loading data."""
    for file in files:
        with file.open("rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        for name, info in header.items():
            if name != "__metadata__":
                yield name, list(info["shape"]), file


def _storage(shape: list[int], qtype: GGUFType, gguf_name: str) -> Any:
    """The GGML type a tensor is stored as: norms (1-D) stay F32; quantized types need rows divisible by 32. In
    4-bit files the token embedding, which is also the output head when tied, stays Q8_0, as llama.cpp's
    quantizer keeps the output tensor at higher precision."""
    import gguf

    if len(shape) < 2 or qtype == "F32":
        return gguf.GGMLQuantizationType.F32
    if qtype == "BF16":
        return gguf.GGMLQuantizationType.BF16
    if qtype in ("Q8_0", "Q4_0") and shape[-1] % QUANT_BLOCK == 0:
        if qtype == "Q4_0" and gguf_name not in ("token_embd.weight", "output.weight"):
            return gguf.GGMLQuantizationType.Q4_0
        return gguf.GGMLQuantizationType.Q8_0
    return gguf.GGMLQuantizationType.F16


def _convert(tensor: np.ndarray, storage: Any) -> np.ndarray:
    import gguf

    if storage == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(tensor, dtype=np.float32)
    if storage == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(tensor, dtype=np.float16)
    return np.asarray(gguf.quants.quantize(np.ascontiguousarray(tensor, dtype=np.float32), storage))


def write_gguf(
    model_dir: Path, out_file: Path, qtype: GGUFType = "F32", on_tensor: Callable[[int, int], None] | None = None
) -> Path:
    """Convert an HF-style Qwen3 model directory (safetensors + tokenizer.json) to a GGUF file at `out_file`;
    `on_tensor(done, total)` is called after each tensor is written (progress)."""
    import gguf
    import torch
    from safetensors import safe_open

    qtype = parse_gguf_type(qtype)
    model_dir, out_file = Path(model_dir), Path(out_file)
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "qwen3":
        raise ValueError(f"{model_dir}: expected a qwen3 model, found {config.get('model_type')!r}")
    started = time.perf_counter()
    num_layers = int(config["num_hidden_layers"])
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, num_layers)
    files = _safetensors_files(model_dir)

    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3])
    _add_hyperparameters(writer, config, qtype, model_dir.name)
    _add_tokenizer(writer, model_dir, config)

    # Pass 1: declare every tensor (name, shape, type, size) so the header can be written before any data.
    plan: list[tuple[str, str, Path, Any]] = []
    for hf_name, shape, file in _tensor_headers(files):
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings", False):
            continue  # tied: llama.cpp reuses token_embd.weight
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"{model_dir}: no GGUF name for tensor {hf_name!r}")
        storage = _storage(shape, qtype, gguf_name)
        if storage in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dtype = np.dtype(np.float32 if storage == gguf.GGMLQuantizationType.F32 else np.float16)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            writer.add_tensor_info(gguf_name, shape, dtype, nbytes)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(tuple(shape), storage)
            writer.add_tensor_info(gguf_name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), storage)
        plan.append((hf_name, gguf_name, file, storage))

    # Pass 2: stream the data in the same order.
    out_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        writer.write_header_to_file(out_file)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        open_files: dict[Path, Any] = {}
        for done, (hf_name, _gguf_name, file, storage) in enumerate(plan, start=1):
            if file not in open_files:
                open_files[file] = safe_open(str(file), framework="pt")
            raw = open_files[file].get_tensor(hf_name)
            if storage == gguf.GGMLQuantizationType.BF16 and raw.dtype == torch.bfloat16:
                # bfloat16 into BF16: the bits as they are (the float32 round trip below is minutes on the 4b shape).
                writer.write_tensor_data(raw.contiguous().view(torch.int16).numpy().view(np.uint8))
            else:
                # Through torch so bfloat16 checkpoints convert too (numpy has no bfloat16).
                writer.write_tensor_data(_convert(raw.float().numpy(), storage))
            if on_tensor is not None:
                on_tensor(done, len(plan))
    finally:
        writer.close()
    logger.info("wrote %s (%s, %.1f s)", out_file, qtype, time.perf_counter() - started)
    return out_file


