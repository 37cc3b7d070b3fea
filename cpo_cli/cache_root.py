"""The one folder cpo keeps files in between runs: prepared datasets (`prepared/`) and the
converted SmolLM2 checkpoint (`smollm2-135m-instruct/`)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$CPO_CACHE`, else `~/.cache/cpo`; read at each call, so a test or a job script can point
    it elsewhere at any time."""
    root = os.environ.get("CPO_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "cpo"
