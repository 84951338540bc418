"""Chat templating and parsing of Qwen3 output (thinking, tool calls)."""
