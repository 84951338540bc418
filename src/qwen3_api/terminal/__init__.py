"""The terminal chat: `qwen3-api chat` and `qwen3-api run`."""
