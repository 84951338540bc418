"""`qwen3-api run MODEL` in a pseudo-terminal, typed as a person would: stream, Ctrl-C, commands, history, save."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.conftest import REPO_ROOT

UP_ARROW = "\x1b[A"
DIM = "\x1b[2m"


def spawn(*args: str, log: Path) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable, ["-m", "qwen3_api.cli", *args], cwd=str(REPO_ROOT), encoding="utf-8", timeout=180,
        dimensions=(40, 120), env={**__import__("os").environ, "TERM": "xterm-256color", "XDG_STATE_HOME": str(log.parent),
             "PROMPT_TOOLKIT_NO_CPR": "1"},
        # A user's terminal delivers Ctrl-C; a suite started in the background (`cmd &`, nohup) ignores SIGINT,
        # and the child would inherit that and never see the Ctrl-C this test sends.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    child.logfile_read = log.open("w")
    return child


def stop_answer(child: pexpect.spawn, typed: str) -> str:
    """Wait for streamed output, press Ctrl-C; returns what the answer printed before `stopped`."""
    child.expect_exact(typed)  # the echo of the typed line
    child.expect_exact("\x1b[?2004l")  # the line editor has left the terminal; the answer follows
    child.expect(r"[\w.,!?]{2}", timeout=120)  # streamed text
    time.sleep(0.3)
    child.sendcontrol("c")
    child.expect("stopped", timeout=30)
    printed = child.before
    child.expect("tokens/s")  # the speed line follows even a stopped answer
    child.expect("you>")
    return str(printed)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "terminal.log"


def test_run_chats_in_process(opened_think_model_dir: Path, tmp_path: Path, log_path: Path) -> None:
    # the opened-think template: with thinking on, the answer streams as reasoning. Our torch engine, not the
    # default llama.cpp path: there the tiny model wrote all 1,500 tokens before the Ctrl-C 0.3 s after the first.
    # 8,000 tokens: on a loaded machine, 1,500 were once all written before the Ctrl-C reached the answer.
    child = spawn("run", str(opened_think_model_dir), "--thinking", "--max-tokens", "8000", "--backend", "torch",
                  log=log_path)  # fmt: skip
    try:
        child.expect("ready in", timeout=240)
        child.expect("thinking on")
        child.expect("you>")

        child.sendline("Tell me a long story.")
        reasoning = stop_answer(child, "Tell me a long story.")
        assert DIM in reasoning  # thinking is dimmed

        # commands, and up-arrow history recalls the last one
        child.sendline("/no_think")
        child.expect("thinking off")
        child.expect("you>")
        child.send(UP_ARROW)
        child.expect("/no_think")
        child.send("\r")
        child.expect("thinking off")
        child.expect("you>")

        # a multiline message, answered in plain content
        child.sendline('"""first line')
        child.expect(r"\.\.\.")
        child.sendline('second line"""')
        stop_answer(child, 'second line"""')

        saved = tmp_path / "conversation.json"
        child.sendline(f"/save {saved}")
        child.expect("saved 4 messages")
        conversation = json.loads(saved.read_text())
        roles = [m["role"] for m in conversation["messages"]]
        assert roles == ["user", "assistant", "user", "assistant"]
        assert conversation["messages"][2]["content"] == "first line\nsecond line"

        child.sendline("/clear")
        child.expect("conversation cleared")
        child.sendline(f"/save {saved}")
        child.expect("saved 0 messages")
        child.sendline("/exit")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, log_path.read_text()


def test_run_of_a_missing_model_is_one_clear_line(tmp_path: Path, log_path: Path) -> None:
    child = spawn("run", str(tmp_path / "no-such-model"), log=log_path)
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    output = log_path.read_text()
    assert child.exitstatus == 1 and "error:" in output and "Traceback" not in output
