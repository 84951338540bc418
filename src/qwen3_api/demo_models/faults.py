"""Fault injection, an option of the demo models: a model runner that is slow, or fails, when chosen tokens reach
it.

Selected only by options of a `test:` model spec, so no real model can reach it:
`test:tiny:delay_ms=50,fail_token=1234` (or with `gguf=F32` for the llama.cpp backend). Options:

- `delay_ms=D`: every forward sleeps D ms first (makes prefill and decode last long enough to disconnect, time out
  or shut down in the middle of them);
- `fail_token=T`: a forward whose batch holds token T raises RuntimeError (a failure of the whole step);
- `nan_token=T`: a request whose tokens include T gets NaN logits in every later step (a fault of one request);
- `die_token=T`: a forward whose batch holds token T raises `InjectedLoopFault`, a BaseException that no step
  handler catches, standing in for an exception that escapes the engine loop itself.

Tokens are matched in prompt chunks only (batch entries of more than one token), never in sampled tokens, so a
random model cannot trip a fault by chance.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # parsing a spec (split_faults) must not import torch
    import torch

    from qwen3_api.engine.protocols import BatchEntry, ModelRunner

FAULT_OPTIONS = ("delay_ms", "fail_token", "nan_token", "die_token")


class InjectedLoopFault(BaseException):
    """Raised by `die_token`: escapes every `except Exception`, as a bug in the loop itself would."""


@dataclass(frozen=True)
class Faults:
    """Which faults a test model's runner injects (see the module docstring)."""

    delay_ms: float = 0.0
    fail_token: int | None = None
    nan_token: int | None = None
    die_token: int | None = None


def split_faults(spec: str) -> tuple[str, Faults | None]:
    """`test:tiny:gguf=F32,delay_ms=5` -> (`test:tiny:gguf=F32`, Faults(delay_ms=5)); other names pass through."""
    parts = spec.split(":", 2)
    if parts[0] != "test" or len(parts) < 3:
        return spec, None
    kept: list[str] = []
    values: dict[str, float | int] = {}
    for item in parts[2].split(","):
        key, _, value = item.partition("=")
        if key in FAULT_OPTIONS:
            values[key] = float(value) if key == "delay_ms" else int(value)
        elif item:
            kept.append(item)
    if not values:
        return spec, None
    name = ":".join(parts[:2]) + (":" + ",".join(kept) if kept else "")
    return name, Faults(**values)  # type: ignore[arg-type]


class FaultInjectingRunner:
    """Wraps a ModelRunner and injects `faults` into its forward passes."""

    def __init__(self, runner: ModelRunner, faults: Faults) -> None:
        self.runner = runner
        self.faults = faults
        self._poisoned: set[str] = set()  # requests that met nan_token

    def forward(self, batch: list[BatchEntry]) -> torch.Tensor:
        faults = self.faults
        if faults.delay_ms:
            time.sleep(faults.delay_ms / 1000)
        tokens = {t for entry in batch if len(entry.token_ids) > 1 for t in entry.token_ids}
        if faults.die_token is not None and faults.die_token in tokens:
            raise InjectedLoopFault(f"injected loop fault at token {faults.die_token}")
        if faults.fail_token is not None and faults.fail_token in tokens:
            raise RuntimeError(f"injected step failure at token {faults.fail_token}")
        if faults.nan_token is not None:
            self._poisoned.update(
                e.request_id for e in batch if len(e.token_ids) > 1 and faults.nan_token in e.token_ids
            )
        logits = self.runner.forward(batch)
        sampling = [e for e in batch if e.need_logits]
        rows = [i for i, e in enumerate(sampling) if e.request_id in self._poisoned]
        if rows:
            logits[rows] = float("nan")
        return logits

    def release(self, request_ids: Iterable[str]) -> None:
        ids = list(request_ids)
        self._poisoned.difference_update(ids)
        self.runner.release(ids)

    def stats(self) -> dict[str, float]:
        return self.runner.stats()

    def __getattr__(self, name: str) -> object:  # the wrapped runner's other attributes (slots, close, ...)
        return getattr(self.runner, name)
