"""The docs: the configuration table matches Settings; every docs page is linked from the README."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_configuration_table_matches_settings() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/settings_table.py", "--check"], capture_output=True, text=True, cwd=REPO_ROOT,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_docs_pages_are_linked_from_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    pages = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "docs").glob("*.md"))
    assert pages
    assert [p for p in pages if f"({p})" not in readme] == []
