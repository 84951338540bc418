"""Server test fixtures shared by the OpenAI API tests and the playground tests."""

from __future__ import annotations

import pytest

THINKING_GENERATION_PROMPT = "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- else -%}{{- '<think>\\n' -}}{%- endif -%}"


@pytest.fixture(scope="session")
def opened_think_model_dir(tiny_model_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The tiny model with a template that opens `<think>` itself when thinking is on (as thinking-only Qwen3
    templates do), so the output holds only `</think>`."""
    target = tmp_path_factory.mktemp("opened-think")
    for item in tiny_model_dir.iterdir():
        (target / item.name).symlink_to(item)
    template = (tiny_model_dir / "chat_template.jinja").read_text()
    old = "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    assert old in template
    (target / "chat_template.jinja").unlink()
    (target / "chat_template.jinja").write_text(template.replace(old, THINKING_GENERATION_PROMPT))
    return target
