"""The interactive terminal chat shared by `qwen3-api chat` (a running server) and `qwen3-api run` (in-process).

Enter sends; a line that starts with \"\"\" opens a multiline message closed by \"\"\" (Alt-Enter also inserts a
new line); up-arrow recalls earlier input; Ctrl-C stops the answer being written; Ctrl-D or /exit quits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from qwen3_api.terminal.session import ChatError, ChatSession

HELP = """commands:
  /think       thinking on (the reasoning is shown dimmed)
  /no_think    thinking off
  /clear       forget the conversation (also /reset)
  /save FILE   write the conversation to FILE as JSON
  /exit        quit (also /bye, /quit, Ctrl-D)
  \"\"\"         start and end a multiline message; Alt-Enter also inserts a new line
Ctrl-C stops the answer being written."""

MULTILINE = '"""'


def _line_reader(history_path: Path | None) -> Callable[[str], str]:
    """prompt_toolkit on a terminal (history, editing, Alt-Enter new lines); plain input() otherwise."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return input
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory
    from prompt_toolkit.key_binding import KeyBindings

    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event) -> None:  # type: ignore[no-untyped-def]
        event.current_buffer.insert_text("\n")

    history: History = InMemoryHistory()
    if history_path is not None:
        try:
            history_path.parent.mkdir(parents=True, exist_ok=True)
            history = FileHistory(str(history_path))
        except OSError:  # a read-only home: keep history for this session only
            pass
    session: PromptSession[str] = PromptSession(history=history, key_bindings=bindings)
    return lambda prompt: session.prompt(prompt)


def default_history_path() -> Path:
    from platformdirs import user_state_dir

    return Path(user_state_dir("qwen3-api")) / "chat-history"


class ChatUI:
    """Reads turns and commands, streams answers (thinking dimmed), prints tokens/s after each answer."""

    def __init__(self, session: ChatSession, console: Console | None = None, history_path: Path | None = None):
        self.session = session
        self.console = console or Console(highlight=False)
        self.read_line = _line_reader(history_path)

    def read_message(self) -> str:
        text = self.read_line("you> ")
        if not text.lstrip().startswith(MULTILINE):
            return text.strip()
        lines = [text.lstrip()[len(MULTILINE) :]]
        while not lines[-1].rstrip().endswith(MULTILINE):
            lines.append(self.read_line("... "))
        lines[-1] = lines[-1].rstrip()[: -len(MULTILINE)]
        return "\n".join(lines).strip()

    def run(self) -> None:
        mode = {True: "on", False: "off", None: "model default"}[self.session.thinking]
        self.console.print(f"[bold]{self.session.model}[/bold] — thinking {mode}; /help lists the commands")
        while True:
            try:
                text = self.read_message()
            except EOFError:
                break
            except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
                continue
            if not text:
                continue
            if text.startswith("/"):
                if not self.command(text):
                    break
                continue
            self.answer(text)

    def command(self, text: str) -> bool:
        """Run one /command; False means quit."""
        name, _, argument = text.partition(" ")
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name in ("/clear", "/reset"):
            self.session.clear()
            self.console.print("[dim]conversation cleared[/dim]")
        elif name == "/think":
            self.session.thinking = True
            self.console.print("[dim]thinking on[/dim]")
        elif name == "/no_think":
            self.session.thinking = False
            self.console.print("[dim]thinking off[/dim]")
        elif name == "/save":
            if not argument.strip():
                self.console.print("[red]usage: /save FILE[/red]")
                return True
            try:
                count = self.session.save(Path(argument.strip()).expanduser())
            except OSError as exc:
                self.console.print(f"[red]cannot save: {exc}[/red]")
            else:
                self.console.print(f"[dim]saved {count} messages to {argument.strip()}[/dim]")
        elif name in ("/help", "/?"):
            self.console.print(HELP, markup=False)
        else:
            self.console.print(f"[red]unknown command {name}; /help lists the commands[/red]")
        return True

    def answer(self, text: str) -> None:
        previous = None
        pieces = self.session.ask(text)
        try:
            for kind, piece in pieces:
                if previous == "reasoning" and kind == "content":
                    self.console.print()
                previous = kind
                self.console.print(piece, end="", style="dim" if kind == "reasoning" else None, markup=False)
        except KeyboardInterrupt:
            pieces.close()  # aborts the request now and keeps the answer as far as it got
            self.console.print("\n[yellow]stopped[/yellow]", end="")
        except (ChatError, OSError) as exc:  # refused by the server, or the server went away
            self.console.print(f"\n[red]error: {exc}[/red]")
            return
        self.console.print()
        self.console.print(f"[dim]{self.stats_line()}[/dim]")

    def stats_line(self) -> str:
        stats = self.session.last
        parts = []
        if stats.completion_tokens is not None:
            parts.append(f"{stats.completion_tokens} tokens")
        if stats.tokens_per_second is not None:
            parts.append(f"{stats.tokens_per_second:.1f} tokens/s")
        if stats.ttft_s is not None:
            parts.append(f"first token {stats.ttft_s * 1000:.0f} ms")
        if stats.finish_reason:
            parts.append(stats.finish_reason)
        return " · ".join(parts) or "no output"
