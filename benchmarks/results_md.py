"""RESULTS.md is shared by every benchmark script: each one rewrites only its own ``## `` section, atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(title: str, text: str, results: Path = RESULTS) -> None:
    """Replaces the section headed ``title`` (a ``## ...`` line) with ``text`` (which starts with that heading),
    or appends it; the other sections stay as they are. Written to a temporary file, then renamed into place."""
    current = results.read_text() if results.exists() else "# Benchmark results\n"
    if title in current:
        head, rest = current.split(title, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        current = head.rstrip() + "\n\n" + text.rstrip() + "\n" + tail
    else:
        current = current.rstrip() + "\n\n" + text.rstrip() + "\n"
    fd, tmp = tempfile.mkstemp(dir=results.parent, prefix=".RESULTS.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(current)
    os.replace(tmp, results)
