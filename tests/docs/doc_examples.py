"""Shell and Python examples of README.md and docs/*.md, extracted so a test can run them verbatim.

A fenced ```bash (or ```sh / ```console-free shell) block is run as written; a ```python block is run with
the project's Python. A line right before a block changes that:
    <!-- docs-test: skip REASON -->       not run here (S3 credentials, Docker, a GPU, the test suite itself);
                                          the test reports it as skipped with REASON
    <!-- docs-test: background -->        a server: started in the background, waited for (GET /readyz)
                                          and stopped when the file's examples are done
    <!-- docs-test: check NAME -->        run, then compare its output with what the text around it says
                                          (NAME: a check in tests/docs/doc_checks.py)
Blocks of one file run in order in one scratch copy of the repo, so a later block sees what an earlier
one made (a store, a served model). The served port is the README's 3000, moved to a free port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(skip|background|check)\b\s*(.*?)\s*-->\s*$")
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python"}
DOC_PORT = 3000


@dataclass
class Example:
    file: Path
    line: int  # 1-based line of the opening fence
    language: str  # bash | python
    code: str
    mode: str = "run"  # run | skip | background | check
    reason: str = ""  # skip: why; check: the check's name

    @property
    def id(self) -> str:
        return f"{self.file.name}:{self.line}"


def extract(path: Path) -> list[Example]:
    """Runnable fenced blocks of a Markdown file, with the directive on the line before each."""
    lines = path.read_text().splitlines()
    examples, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"{path}:{i + 1}: code block never closed")
        lang = RUNNABLE.get(m.group(1).lower())
        if lang:
            d = DIRECTIVE.match(lines[i - 1].strip()) if i > 0 else None
            examples.append(Example(path, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                                    d.group(1) if d else "run", d.group(2) if d else ""))
        i = end + 1
    return examples


def with_port(code: str, port: int) -> str:
    """The example with the documented port moved to `port` (the test's free one)."""
    return re.sub(rf"(?<=[:\s=]){DOC_PORT}\b", str(port), code)


def doc_files(repo: Path) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]
