"""Write the configuration tables of README.md and docs/configuration.md from the Settings model (the one source
of truth) and the flags of `qwen3-api serve`.

    python scripts/settings_table.py          # rewrite the tables
    python scripts/settings_table.py --check  # exit 1 when a table differs from Settings
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from pydantic_core import PydanticUndefined

from qwen3_api.cli import serve
from qwen3_api.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "docs" / "configuration.md")
# Settings whose flag has another name (a repeatable flag is named for one item).
FLAG_NAMES = {"api_keys": "api_key"}
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    """A Markdown table: setting, environment variable, default, description."""
    prefix = Settings.model_config.get("env_prefix", "")
    flags = set(inspect.signature(serve).parameters)
    rows = ["| flag | environment variable | default | description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "required" if default is PydanticUndefined else ("unset" if default is None else repr(default))
        shown = shown.replace("'", "") if isinstance(default, str) else shown
        flag_name = FLAG_NAMES.get(name, name)
        flag = f"`--{flag_name.replace('_', '-')}`" if flag_name in flags else "(env only)"
        rows.append(f"| {flag} | `{prefix}{name.upper()}` | `{_cell(shown)}` | {_cell(field.description or '')} |")
    return "\n".join(rows)


def with_table(doc: str) -> str:
    """`doc` with the text between the markers replaced by the current table."""
    before, rest = doc.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{settings_table()}\n{END}{after}"


def main(argv: list[str]) -> int:
    stale = []
    for doc in DOCS:
        current = doc.read_text()
        wanted = with_table(current)
        if current == wanted:
            continue
        stale.append(doc)
        if "--check" not in argv:
            doc.write_text(wanted)
    if stale and "--check" in argv:
        print(f"out of date: {', '.join(map(str, stale))}: run python scripts/settings_table.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
