"""README.md and docs/*.md: every shell and Python example runs verbatim (slow test: it runs the main job and
serves the model), and the extraction itself is checked on a crafted document (fast)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .doc_checks import CHECKS, DocContext, json_objects
from .doc_examples import Example, doc_files, extract, with_port

REPO = Path(__file__).resolve().parents[2]
SERVER_START_S = 180


def test_extraction_reads_blocks_and_directives(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("text\n```bash\necho one\n```\n<!-- docs-test: skip needs Docker -->\n```bash\ndocker build .\n```\n"
                  "<!-- docs-test: background -->\n```bash\ncvpipe serve --port 3000\n```\n```yaml\na: 1\n```\n"
                  "```python\nprint('http://127.0.0.1:3000/x')\n```\n")
    ex = extract(md)
    assert [(e.language, e.mode, e.line) for e in ex] == [("bash", "run", 2), ("bash", "skip", 6),
                                                         ("bash", "background", 10), ("python", "run", 16)]
    assert ex[1].reason == "needs Docker" and ex[0].code == "echo one\n"
    assert with_port(ex[2].code, 41234) == "cvpipe serve --port 41234\n"
    assert with_port(ex[3].code, 41234) == "print('http://127.0.0.1:41234/x')\n"
    assert with_port("sleep 30000; x=3000", 5) == "sleep 30000; x=5"


def test_every_doc_block_is_closed_and_every_skip_says_why():
    checked = []
    for path in doc_files(REPO):
        for e in extract(path):
            assert e.mode != "skip" or e.reason, f"{e.id}: a skipped example must say why"
            if e.mode == "check":
                assert e.reason in CHECKS, f"{e.id}: no check named {e.reason!r} in tests/docs/doc_checks.py"
                checked.append(e.reason)
    assert sorted(checked) == sorted(CHECKS), "every check is used by exactly one block"


def test_json_objects_reads_concatenated_curl_output():
    assert json_objects('{"a": 1}{"b": [2]}\nsaved test.jpg\n{"c": {}}') == [{"a": 1}, {"b": [2]}, {"c": {}}]


def test_step_6_check_fails_when_the_service_keeps_the_old_model(monkeypatch):
    """The README step 6 check itself can fail: a promoted model that /info does not show, or no promotion."""
    from . import doc_checks

    ctx = DocContext(REPO, {}, 0)
    before = {"champion": "old", "served": "old"}
    monkeypatch.setattr(doc_checks, "_champion", lambda _: "new")
    after = CHECKS["served-model-moves"][1]
    after(ctx, before, '{"run_id": "new"}')
    with pytest.raises(AssertionError, match="/info shows old"):
        after(ctx, before, '{"run_id": "old"}')
    monkeypatch.setattr(doc_checks, "_champion", lambda _: "old")
    with pytest.raises(AssertionError, match="not promoted"):
        after(ctx, before, '{"run_id": "old"}')


def _scratch_repo(dest: Path) -> Path:
    """The tracked files (mtimes kept, so make sees the install as current) and the project's .venv.

    The .venv is shared: were its install older than pyproject.toml, the examples' `make run` would reinstall
    the project from the scratch copy into it, so that is refused first (CI's `make test` installs first)."""
    stamp = REPO / ".venv" / ".cvpipe-installed"
    stale = [p.name for p in (REPO / "pyproject.toml", REPO / "constraints" / "cpu.txt")
             if not stamp.is_file() or p.stat().st_mtime > stamp.stat().st_mtime]
    if stale:
        pytest.fail(f"the .venv install is older than {', '.join(stale)}: run `make install` first")
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def _environment(work: Path) -> dict[str, str]:
    shim = work / ".docs-test-bin"
    shim.mkdir()
    real = shutil.which("curl") or "/usr/bin/curl"
    (shim / "curl").write_text(f'#!/bin/sh\nexec {real} --fail-with-body -sS "$@"\n')  # a 4xx/5xx fails the example
    (shim / "curl").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PATH=f"{shim}:{work / '.venv' / 'bin'}:{env.get('PATH', '')}", BENTOML_DO_NOT_TRACK="true",
               VIRTUAL_ENV=str(work / ".venv"))
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(e: Example, port: int) -> list[str]:
    code = with_port(e.code, port)
    return ["bash", "-euo", "pipefail", "-c", code] if e.language == "bash" else [sys.executable, "-c", code]


def _wait_ready(proc: subprocess.Popen, port: int, e: Example) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{e.id}: the server exited ({proc.returncode}):\n{e.code}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{e.id}: the server was not ready on port {port} after {SERVER_START_S} s")


def _run_examples(examples: list[Example], work: Path, env: dict[str, str]) -> list[str]:
    """Run in order; servers (background examples) stay up until every example has run."""
    port, servers, skipped = _free_port(), [], []
    try:
        for e in examples:
            if e.mode == "skip":
                skipped.append(f"{e.id}: {e.reason}")
            elif e.mode == "background":
                log = open(work / f"server-{e.file.stem}-{e.line}.log", "w")
                servers.append(subprocess.Popen(_command(e, port), cwd=work, env=env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True))
                _wait_ready(servers[-1], port, e)
            else:
                ctx = DocContext(work, env, port)
                before, after = CHECKS[e.reason] if e.mode == "check" else (lambda _: None, None)
                state = before(ctx)
                res = subprocess.run(_command(e, port), cwd=work, env=env, capture_output=True, text=True,
                                     timeout=1200)
                if res.returncode != 0:
                    pytest.fail(f"{e.id} exited {res.returncode}:\n{e.code}\n--- output ---\n"
                                f"{(res.stdout + res.stderr)[-3000:]}")
                if after is not None:
                    after(ctx, state, res.stdout)
    finally:
        for proc in servers:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    return skipped


@pytest.mark.slow
@pytest.mark.timeout(2400)  # the README trains the main job twice (make run, then step 6): ~4 min each idle
def test_doc_examples_run_verbatim(tmp_path):
    """README.md first, then docs/*.md, as a reader goes: one scratch copy of the repo, one store, one served
    model; a later example sees what an earlier one made."""
    work = _scratch_repo(tmp_path / "repo")
    examples = [e for path in doc_files(work) for e in extract(path)]
    assert any(e.mode == "run" for e in examples)
    skipped = _run_examples(examples, work, _environment(work))
    if skipped:  # visible in the output, with the reason given in the Markdown
        print("examples not run here:\n  " + "\n  ".join(skipped))
