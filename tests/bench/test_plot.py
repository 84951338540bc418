"""`qwen3-api bench --plot`: a real (tiny) sweep against the live server draws a PNG, with fresh prompts per level."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib import image

from tests.conftest import REPO_ROOT, ServerPool
from tests.server.test_metrics import scrape

CACHE_HITS = "qwen3_api_response_cache_hits_total[]"


def test_bench_sweep_writes_a_plot(server_pool: ServerPool, tiny_model_dir: Path, tmp_path: Path) -> None:
    torch_server = server_pool.get(str(tiny_model_dir), "--backend", "torch")  # one backend is enough here
    png, results = tmp_path / "bench.png", tmp_path / "bench.json"
    command = [sys.executable, "-m", "qwen3_api.cli", "bench", "--url", torch_server.url, "--num-requests", "2",
               "--concurrency", "1", "--concurrency", "2", "--prompt-tokens", "8", "--output-tokens", "4",
               "--tokenizer", str(tiny_model_dir), "--json-out", str(results), "--plot", str(png)]  # fmt: skip
    hits_before = scrape(torch_server)[CACHE_HITS]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    # Each level sent fresh prompts: none was answered from the response cache (greedy requests are cacheable).
    assert scrape(torch_server)[CACHE_HITS] == hits_before
    assert f"plot written to {png}" in done.stdout
    sweep = json.loads(results.read_text())
    assert [r["concurrency"] for r in sweep] == [1, 2] and all(r["completed"] == 2 for r in sweep)
    pixels = image.imread(png)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 1200  # three panels side by side
    assert np.std(pixels[..., :3]) > 0.05  # drawn, not blank
