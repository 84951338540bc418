"""/metrics of several replicas as one exposition: each sample gets a `replica` label, families stay together."""

from __future__ import annotations

import re

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def merge_metrics(texts: dict[str, str]) -> str:
    """Prometheus text of every replica (`replica id -> its /metrics body`), labelled by replica."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for replica_id, text in sorted(texts.items()):
        family = ""
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    lines = headers.setdefault(family, [])
                    if line not in lines:
                        lines.append(line)
                    samples.setdefault(family, [])
                continue
            samples.setdefault(family, []).append(with_label(line, "replica", replica_id))
    out: list[str] = []
    for family, lines in samples.items():
        out.extend(headers.get(family, []))
        out.extend(lines)
    return "\n".join(out) + "\n"


def with_label(sample_line: str, name: str, value: str) -> str:
    """One sample line with label `name="value"` added first."""
    match = _NAME.match(sample_line)
    if match is None:
        return sample_line
    metric, rest = match.group(0), sample_line[match.end() :]
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    label = f'{name}="{escaped}"'
    if rest.startswith("{"):
        return f"{metric}{{{label}," + rest[1:] if not rest.startswith("{}") else f"{metric}{{{label}}}" + rest[2:]
    return f"{metric}{{{label}}}{rest}"
