"""Start a server as a child process on a free port, wait until it answers, and stop it with its children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx


class ServerStartError(Exception):
    """The server exited or did not become ready in time."""


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server child process; its stdout and stderr go to `log_path`."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        health_paths: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.health_paths = tuple(health_paths)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Launch the command in its own session, so `stop` can end it together with its children."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            log.write(("$ " + " ".join(self.command) + "\n").encode())
            log.flush()
            self._process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float) -> float:
        """Poll the health paths until one answers 200; return the seconds it took."""
        if self._process is None:
            raise RuntimeError("start() the server first")
        started = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5.0, trust_env=False) as client:
            while time.monotonic() - started < timeout_s:
                if self._process.poll() is not None:
                    raise ServerStartError(f"{self.name} exited with code {self._process.returncode}")
                for path in self.health_paths:
                    try:
                        if client.get(path).status_code == 200:
                            return time.monotonic() - started
                    except httpx.HTTPError:
                        pass
                time.sleep(1.0)
        raise ServerStartError(f"{self.name} was not ready after {timeout_s:.0f} s")

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL it if it is still there after `grace_s`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_s)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
