"""Locally built test models (real Qwen3 tokenizer, random weights in real Qwen3 shapes)."""
