"""The benchmark scripts live in benchmarks/ (run as scripts, not installed): make them importable here."""

from __future__ import annotations

import sys

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
