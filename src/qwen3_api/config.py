"""Settings: every flag of `qwen3-api serve` is also an environment variable QWEN3_API_<NAME>."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "Qwen/Qwen3-4B-Instruct-2507"

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
Backend = Literal["auto", "torch", "reference", "llamacpp"]
# q8_0 / q4_k_m / q4_0: a safetensors checkpoint converted once to that GGUF quant and served on llama.cpp.
Quantization = Literal["auto", "none", "int8", "q8_0", "q4_k_m", "q4_0"]


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
        description="int8: weight-only int8 at load (torch); q8_0|q4_k_m|q4_0: converted once to that GGUF quant and "
        "served on llama.cpp; auto: q8_0 on CPU, none on GPU",
    )
    max_num_seqs: int = Field(
        16, ge=1, le=1024, description="most sequences decoded together in one step (llamacpp: 4 unless set)"
    )
    max_num_batched_tokens: int = Field(512, ge=16, description="token budget of one engine step (chunked prefill)")
    block_size: int = Field(16, ge=1, le=256, description="tokens per KV cache block")
    kv_cache_memory: float | None = Field(
        None,
        gt=0,
        description="KV cache budget in GiB; default: torch 1 GiB on CPU and kv_cache_fraction of free GPU memory, "
        "llamacpp llamacpp_kv_memory_share of available memory",
    )
    kv_cache_fraction: float = Field(0.85, gt=0, lt=1, description="share of free GPU memory for the KV cache")
    max_model_len: int | None = Field(None, ge=16, description="context limit; default from the model config")
    enable_prefix_caching: bool = Field(True, description="reuse KV blocks of repeated prompt prefixes")
    max_num_return_sequences: int = Field(8, ge=1, le=64, description="cap of num_return_sequences / n")
    max_queued_requests: int = Field(256, ge=1, description="requests waiting beyond this get 503")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    # ---- deadlines, faults and shutdown ----
    request_timeout: float = Field(
        600.0, ge=0, description="seconds a request may take from submission; past it the engine aborts it (0: none)"
    )
    shutdown_timeout: float = Field(
        30.0, ge=0, description="seconds unfinished requests get to finish after SIGTERM/SIGINT before being aborted"
    )
    # Responses API
    responses_store_size: int = Field(
        1000, ge=0, description="responses kept in memory for previous_response_id and GET (LRU; 0 keeps none)"
    )

    # llama.cpp backend: CPU performance and context (issue 10, items 1 and 3)
    kv_cache_dtype: Literal["f16", "q8_0"] = Field(
        "f16", description="llama.cpp KV cell type; q8_0 halves KV memory (and turns flash attention on)"
    )
    llamacpp_kv_memory_share: float = Field(
        0.5, gt=0, lt=1, description="share of available memory (less the weights) for llama.cpp KV when "
        "--kv-cache-memory is unset",
    )  # fmt: skip
    llamacpp_kv_unified: bool | None = Field(
        None, description="one KV pool for all llama.cpp sequences (a long request uses what idle ones do not); "
        "off: each sequence owns max_model_len cells (attention spans only its own: faster decode with many "
        "sequences); unset: off when every sequence fits at full length in the KV budget and no finished "
        "conversations are kept, else on",
    )  # fmt: skip
    llamacpp_retained_sequences: int = Field(
        0, ge=0, le=255, description="finished conversations whose KV stays in the shared llama.cpp pool for "
        "prefix reuse beside the running ones (the pool grows for them; least recently used dropped first). A hit "
        "needs no copy back, as one from the host cache does, but decode slows, as attention spans their cells. "
        "With --max-num-seqs at most 256 (llama.cpp's limit)",
    )  # fmt: skip
    llamacpp_host_cache_memory: float | None = Field(
        None, ge=0, description="GiB of host memory for finished conversations' llama.cpp KV once their sequence "
        "is needed for another request, restored (copied back) when a later prompt starts the same way (LRU); "
        "default: a quarter of the memory available after weights and KV, at most 8 GiB; 0: off",
    )  # fmt: skip
    llamacpp_flash_attention: Literal["auto", "on", "off"] = Field(
        "auto", description="llama.cpp flash attention; auto: on, except with per-sequence KV asked for "
        "(--no-llamacpp-kv-unified), the batch-invariant setting, where it would make a sequence's logits depend "
        "on its batch-mates",
    )  # fmt: skip
    llamacpp_threads: int | None = Field(None, ge=1, description="llama.cpp decode threads; default all cores")
    llamacpp_threads_batch: int | None = Field(
        None, ge=1, description="llama.cpp prefill threads; default --llamacpp-threads"
    )
    llamacpp_ubatch: int | None = Field(
        None, ge=1, description="llama.cpp physical batch in tokens; default 512 (at most the step budget)"
    )
    llamacpp_weight_repack: Literal["auto", "on", "cpu", "off"] = Field(
        "auto",
        description="llama.cpp CPU weight repacking: on (every extra layout), cpu (CPU_REPACK only, no AMX), off; "
        "auto: cpu where the build has AMX, else on",
    )
    # Speculative decoding on llama.cpp (issue 10, item 6)
    speculative: Literal["off", "ngram"] = Field(
        "off", description="ngram: prompt-lookup drafts verified in one batched decode (llamacpp backend only)"
    )
    num_speculative_tokens: int = Field(5, ge=1, le=16, description="draft tokens verified per sequence per step")
    ngram_min: int = Field(2, ge=1, le=16, description="shortest context suffix looked up for drafts")
    ngram_max: int = Field(4, ge=1, le=16, description="longest context suffix looked up for drafts (tried first)")
    speculative_max_batch: int = Field(
        2, ge=1, description="speculate only while at most this many sequences decode in a step (off beyond)"
    )

    @model_validator(mode="after")
    def _retained_needs_pool(self) -> Settings:
        if self.llamacpp_retained_sequences and self.llamacpp_kv_unified is False:
            raise ValueError(
                "llamacpp_retained_sequences needs the shared KV pool (llamacpp_kv_unified): with per-sequence KV "
                "every extra sequence would take its share of the cells from the running ones"
            )
        return self

    @model_validator(mode="after")
    def _ngram_range(self) -> Settings:
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) must be <= ngram_max ({self.ngram_max})")
        return self

    # Safetensors checkpoints on llama.cpp (--quantize q8_0|q4_k_m|q4_0, the CPU default)
    gguf_cache_dir: Path | None = Field(
        None, description="where checkpoints converted to GGUF are cached; default the user cache dir (qwen3-api/gguf)"
    )
    # Caching across requests and restarts (issue 11)
    response_cache_mb: float = Field(
        256, ge=0, description="response cache budget in MiB of stored responses (greedy or seeded requests); 0: off"
    )
    response_cache_ttl: float = Field(3600, gt=0, description="seconds a cached response stays valid")
    prefix_cache_dir: Path | None = Field(
        None, description="keep the hottest cached prefixes here across restarts (torch, llamacpp); off when unset"
    )
    prefix_cache_dir_mb: float = Field(2048, gt=0, description="most MiB prefix_cache_dir holds (a snapshot: half)")
    prefix_cache_save_interval: float = Field(
        300, gt=0, description="seconds between background snapshots of the prefix cache (also saved at shutdown)"
    )

    @field_validator("model")
    @classmethod
    def _model_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must not be empty")
        return value.strip()

    # ---- HTTP hardening (issue 9): limits, auth, CORS, observability ----
    max_request_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="request bodies larger than this get 413 before they are parsed"
    )
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        (), description="keys accepted as 'Authorization: Bearer <key>' (env: comma-separated); none: no auth"
    )
    api_key_file: Path | None = Field(None, description="file with one more accepted API key per line")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="origins browsers may call from (env: comma-separated; '*' for any); none: no CORS"
    )
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per log line")
    grammar_compile_timeout: float = Field(
        10.0, gt=0, description="seconds a structured-output grammar may take to compile before the request gets 400"
    )

    # ---- scaling out on Ray Serve (qwen3_api.scaleout) ----
    replicas: int = Field(
        1, ge=1, description="engine replicas; above 1 (or with --ray-address) they run on Ray Serve behind one ingress"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join (host:port or auto); default: a local one is started"
    )
    min_replicas: int | None = Field(None, ge=1, description="autoscaling: fewest replicas (turns autoscaling on)")
    max_replicas: int | None = Field(None, ge=1, description="autoscaling: most replicas (turns autoscaling on)")
    autoscale_target_ongoing_requests: float = Field(
        8, gt=0, description="autoscaling: requests in flight per replica that Ray Serve aims for"
    )
    replica_cpus: float = Field(1.0, ge=0, description="CPUs Ray reserves per replica (also its torch threads)")
    replica_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica")
    routing: Literal["prefix", "random"] = Field(
        "prefix", description="replica choice: prefix = longest cached prompt prefix unless overloaded; random"
    )
    route_overload_slack: int = Field(
        4, ge=0, description="a replica holding the prefix is skipped with more than this many requests above the "
        "least-loaded one (and route_overload_ratio times it)",
    )  # fmt: skip
    route_overload_ratio: float = Field(1.5, ge=1, description="see route_overload_slack")
    route_min_match_ratio: float = Field(
        0.1, ge=0, le=1, description="share of the prompt a cached prefix must cover to attract the request"
    )

    @model_validator(mode="after")
    def _replica_range(self) -> Settings:
        low, high = self.min_replicas, self.max_replicas
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_replicas ({low}) must not exceed max_replicas ({high})")
        return self

    @property
    def scaled_out(self) -> bool:
        """True when the server runs on Ray Serve (several replicas, autoscaling or a cluster to join)."""
        return (
            self.replicas > 1 or self.ray_address is not None
            or self.min_replicas is not None or self.max_replicas is not None
        )  # fmt: skip

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("api_key_file")
    @classmethod
    def _key_file_readable(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"api_key_file {value} is not a readable file")
        return value
