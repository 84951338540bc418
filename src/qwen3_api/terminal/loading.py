"""Loading a model for `qwen3-api run`, with a rich progress line per loading step.

The loader reports its steps through logging (resolving, downloading, runtime choice, loading weights, int8
quantization, ready); each step becomes a line with a spinner and its elapsed time, the finished ones ticked.
Download byte bars are huggingface_hub's own, printed above.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from qwen3_api.config import Settings
    from qwen3_api.engine.async_engine import AsyncEngine


class _StepsHandler(logging.Handler):
    """Turns each INFO log record of the loader into a progress step; the previous step is marked done."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress
        self.current: TaskID | None = None

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.progress.console.print(f"[yellow]{text}[/yellow]", markup=True, highlight=False)
            return
        self.finish()
        self.current = self.progress.add_task(text, total=1)

    def finish(self) -> None:
        if self.current is not None:
            self.progress.update(self.current, completed=1)


def load_with_progress(settings: Settings, console: Console) -> AsyncEngine | None:
    """Load the engine as `serve` does; None (after one clear line) when the model cannot be loaded."""
    from qwen3_api.errors import Qwen3APIError
    from qwen3_api.runtime.loader import load_engine

    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/green]"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    handler = _StepsHandler(progress)
    package_logger = logging.getLogger("qwen3_api")
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False
    started = time.monotonic()
    try:
        with progress:
            first = progress.add_task(f"loading {settings.model}", total=1)
            handler.current = first
            engine = load_engine(settings)
            handler.finish()
    except Qwen3APIError as exc:
        console.print(f"[red]error: {exc}[/red]")
        return None
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        package_logger.propagate = True
    console.print(f"ready in {time.monotonic() - started:.1f} s", style="green")
    return engine
