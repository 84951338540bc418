"""The peers of `benchmarks/cpu_peers.py`: llama.cpp's llama-server and OpenVINO GenAI, and how each is driven."""
