"""Write the configuration table of docs/configuration.md from the Settings model (the one source of truth).

    python scripts/settings_table.py          # rewrite the table in docs/configuration.md
    python scripts/settings_table.py --check  # exit 1 when the doc's table differs from Settings
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_core import PydanticUndefined

from qwen3_api.config import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_table() -> str:
    """A Markdown table: setting, environment variable, default, description."""
    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| setting | environment variable | default | description |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "required" if default is PydanticUndefined else ("unset" if default is None else repr(default))
        shown = shown.replace("'", "") if isinstance(default, str) else shown
        rows.append(f"| `{name}` | `{prefix}{name.upper()}` | `{_cell(shown)}` | {_cell(field.description or '')} |")
    return "\n".join(rows)


def with_table(doc: str) -> str:
    """`doc` with the text between the markers replaced by the current table."""
    before, rest = doc.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{settings_table()}\n{END}{after}"


def main(argv: list[str]) -> int:
    current = DOC.read_text()
    wanted = with_table(current)
    if "--check" in argv:
        if current != wanted:
            print(f"{DOC} is out of date: run python scripts/settings_table.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
