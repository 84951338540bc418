"""Demo checkpoints the server can serve with no download: the `test:<shape>` models (`--model test:tiny`), built
locally with the real Qwen3 tokenizer and seeded random weights in real Qwen3 shapes, as safetensors or GGUF, with
optional fault injection (faults.py) for tests of failure handling."""
