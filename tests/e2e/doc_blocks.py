"""Every fenced code block in README.md and docs/, with the marker that says how it is tested.

Each block carries, on the line before its opening fence (blank lines allowed between), one of:

- ``<!-- doc-test: NAME -->``: a test runs it for real and finds it with ``doc_block("NAME")``;
- ``<!-- include: examples/FILE -->``: the block is that file, byte for byte, and a test runs
  the file;
- ``<!-- not-run: REASON -->``: an output sample, a wire format or a synopsis; JSON, TOML and
  YAML ones are still parsed.

tests/e2e/test_docs.py fails on a block without a marker, so a new snippet cannot skip this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>doc-test|include|not-run):\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and its marker (if any)."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    kind: str | None  # "doc-test", "include", "not-run" or None
    arg: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    """README.md, every Markdown file under docs/, and THREAT_MODEL.md."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    threat = ROOT / "THREAT_MODEL.md"
    if threat.exists():
        files.append(threat)
    return files


def parse(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            body.append(lines[j][indent:] if lines[j][:indent].isspace() else lines[j])
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = _MARKER.match(lines[k]) if k >= 0 else None
        text = "\n".join(body) + "\n" if body else ""
        blocks.append(
            Block(
                path,
                i + 1,
                opening["lang"],
                text,
                marker["kind"] if marker else None,
                marker["arg"] if marker else "",
            )
        )
        i = j + 1
    return blocks


@cache
def all_blocks() -> tuple[Block, ...]:
    return tuple(block for path in doc_files() for block in parse(path))


def doc_block(name: str) -> Block:
    """The one block marked ``<!-- doc-test: NAME -->``."""
    found = [b for b in all_blocks() if b.kind == "doc-test" and b.arg == name]
    assert len(found) == 1, f"expected one block marked doc-test: {name}, found {len(found)}"
    return found[0]
