"""The engine: request scheduling, KV cache management, sampling and detokenization. Never imports FastAPI."""
