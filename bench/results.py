"""Write one section of bench/RESULTS.md, leaving the others as they are."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nMeasured on the project's 2-core CPU machine unless a section says otherwise.\n"


def write_section(name: str, markdown: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def publish(name: str, markdown: str, write: bool = True) -> None:
    """Print a benchmark's section and, unless ``write`` is off (``--no-write``), store it in RESULTS.md."""
    print(markdown, flush=True)
    if write:
        write_section(name, markdown)
