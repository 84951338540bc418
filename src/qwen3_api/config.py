"""Settings: every flag of `qwen3-api serve` is also an environment variable QWEN3_API_<NAME>."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Backend = Literal["auto", "torch", "reference", "llamacpp"]
Quantization = Literal["auto", "none", "int8"]


class Settings(BaseSettings):
    """Validated server and engine configuration."""

    model_config = SettingsConfigDict(env_prefix="QWEN3_API_", extra="forbid", frozen=True)

    model: str = Field(DEFAULT_MODEL, description="HF repo id, local model directory, or test:<tiny|0.6b|4b>")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(2025, ge=0, le=65535, description="port to listen on")
    device: Device = Field("auto", description="auto picks cuda when available, else cpu")
    dtype: DType = Field("auto", description="auto: bfloat16 on CUDA, float32 on CPU")
    backend: Backend = Field(
        "auto", description="torch: our batching engine; llamacpp: GGUF models; reference: HF generate, one at a time"
    )
    quantize: Quantization = Field(
        "auto",
        description="int8: weight-only int8 weights made at load (torch backend); auto: int8 on CPU, none on GPU",
    )
    max_num_seqs: int = Field(16, ge=1, le=1024, description="most sequences decoded together in one step")
    max_num_batched_tokens: int = Field(512, ge=16, description="token budget of one engine step (chunked prefill)")
    block_size: int = Field(16, ge=1, le=256, description="tokens per KV cache block")
    kv_cache_memory: float | None = Field(
        None, gt=0, description="KV cache budget in GiB; default 1 GiB on CPU, kv_cache_fraction of free GPU memory"
    )
    kv_cache_fraction: float = Field(0.85, gt=0, lt=1, description="share of free GPU memory for the KV cache")
    max_model_len: int | None = Field(None, ge=16, description="context limit; default from the model config")
    enable_prefix_caching: bool = Field(True, description="reuse KV blocks of repeated prompt prefixes")
    max_num_return_sequences: int = Field(8, ge=1, le=64, description="cap of num_return_sequences / n")
    max_queued_requests: int = Field(256, ge=1, description="requests waiting beyond this get 503")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    # Caching across requests and restarts (issue 11)
    response_cache_mb: float = Field(
        256, ge=0, description="response cache budget in MiB of stored responses (greedy or seeded requests); 0: off"
    )
    response_cache_ttl: float = Field(3600, gt=0, description="seconds a cached response stays valid")
    prefix_cache_dir: Path | None = Field(
        None, description="keep the hottest prefix KV blocks here across restarts (torch backend); off when unset"
    )
    prefix_cache_dir_mb: float = Field(2048, gt=0, description="most MiB of KV blocks written to prefix_cache_dir")
    prefix_cache_save_interval: float = Field(
        300, gt=0, description="seconds between background snapshots of the prefix cache (also saved at shutdown)"
    )

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must not be empty")
        return value.strip()
