"""Startup time (process start to /health 200) and memory (peak and settled RSS) of `qwen3-api serve`.

    python benchmarks/startup.py --model test:tiny --model test:0.6b [--backend torch] [--dtype float32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

from qwen3_api.bench.server_process import free_port


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(model: str, extra: list[str], timeout: float) -> tuple[float, float, float]:
    import subprocess

    port = free_port()
    with tempfile.NamedTemporaryFile(prefix="startup-", suffix=".log", delete=False) as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "qwen3_api.cli", "serve", "--model", model, "--port", str(port), *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            while time.perf_counter() - started < timeout:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited; log in {log.name}")
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                        ready = time.perf_counter() - started
                        requests.post(
                            f"http://127.0.0.1:{port}/generate", json={"prompt": "hi", "max_length": 4}, timeout=120
                        )
                        current, peak = rss_mib(process.pid)
                        return ready, current, peak
                except requests.RequestException:
                    pass
                time.sleep(0.1)
            raise TimeoutError(f"not healthy in {timeout} s; log in {log.name}")
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="repeatable")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    print(f"{'model':40} {'ready s':>8} {'RSS MiB':>9} {'peak MiB':>9}")
    for model in args.model:
        ready, current, peak = measure(model, ["--backend", args.backend, "--dtype", args.dtype], args.timeout)
        print(f"{model:40} {ready:8.1f} {current:9.0f} {peak:9.0f}")


if __name__ == "__main__":
    main()
