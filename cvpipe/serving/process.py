"""Run a real `bentoml serve` in a subprocess, for tests, model_test, benchmarks and `cvpipe serve`.

    with ServiceProcess("bento/cvpipe-detector.bento") as svc:   # or a built bento dir, or a tag
        httpx.post(svc.url + "/predict", files={"image": open("x.jpg", "rb")})

A `.bento` archive is first `bentoml import`ed into a BentoML home of its own (a temporary one unless
`bentoml_home` is given), so nothing lands in ~/bentoml. The server gets a free port, is waited for on
/readyz, and is always stopped (SIGTERM to its process group, then SIGKILL).

It also dies with its parent, however the parent ends (issue 13): on Linux the server is started with
PR_SET_PDEATHSIG=SIGTERM (it stops its workers, which themselves die with the server: see
cvpipe.serving.service), and a normal interpreter exit stops every server still running (atexit).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import IO

import httpx
import yaml

PR_SET_PDEATHSIG = 1
_running: set[ServiceProcess] = set()


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> None:
    """Ask Linux to send `sig` to this process when its parent ends; exit now if the parent is already gone
    (it may have died before this ran). A no-op where prctl does not exist."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def _stop_all_at_exit() -> None:
    for svc in list(_running):
        svc.stop(timeout_s=5.0)


atexit.register(_stop_all_at_exit)


class ServiceStartError(RuntimeError):
    """The service did not become ready; the message ends with the server log tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bentoml_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("bentoml")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "bentoml"]


def bento_tag_of_archive(archive: Path) -> str:
    """name:version from the bento.yaml inside an exported .bento (a tar archive)."""
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "bento.yaml"), None)
        if member is None:
            raise ServiceStartError(f"{archive} is not a Bento archive: it holds no bento.yaml")
        fileobj = tar.extractfile(member)
        if fileobj is None:  # a directory or link named bento.yaml
            raise ServiceStartError(f"{archive}: its bento.yaml is not a regular file")
        info = yaml.safe_load(fileobj.read())
    return f"{info['name']}:{info['version']}"


def child_env(bentoml_home: Path | None, workers: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["BENTOML_DO_NOT_TRACK"] = "true"
    env["CVPIPE_WORKERS"] = str(workers)
    env.setdefault("OMP_NUM_THREADS", "1")
    if bentoml_home is not None:
        env["BENTOML_HOME"] = str(bentoml_home)
    env.update(extra or {})
    return env


def import_bento(archive: Path, bentoml_home: Path, timeout_s: float = 120) -> str:
    """`bentoml import` the archive into bentoml_home; returns its tag."""
    bentoml_home.mkdir(parents=True, exist_ok=True)
    tag = bento_tag_of_archive(archive)
    proc = subprocess.run([*bentoml_cmd(), "import", str(archive)], env=child_env(bentoml_home, 1),
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 and "already exists" not in (proc.stdout + proc.stderr):
        raise ServiceStartError(f"bentoml import {archive} failed (exit {proc.returncode}):\n"
                                f"{(proc.stdout + proc.stderr)[-3000:]}")
    return tag


class ServiceProcess:
    """A `bentoml serve` subprocess; a context manager whose `.url` is the service's base URL.

    bento_or_dir: a `.bento` archive, a built Bento dir (holds bento.yaml), a source dir with a
    bentofile.yaml, or a Bento tag (name:version, looked up in `bentoml_home`).
    """

    def __init__(self, bento_or_dir: str | Path, host: str = "127.0.0.1", port: int | None = None,
                 bentoml_home: str | Path | None = None, workers: int = 1, ready_timeout_s: float = 120.0,
                 env: dict | None = None, log_path: str | Path | None = None):
        self.target = bento_or_dir
        self.host = host
        self.port = port
        self.bentoml_home = Path(bentoml_home) if bentoml_home else None
        self.workers = int(workers)
        self.ready_timeout_s = float(ready_timeout_s)
        self.extra_env = env or {}
        self.log_path = Path(log_path) if log_path else None
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def _serve_args(self) -> tuple[list[str], Path | None]:
        target = Path(str(self.target))
        if target.is_file():
            if self.bentoml_home is None:
                self.bentoml_home = Path(self._tmpdir()) / "bentoml_home"
            return [import_bento(target, self.bentoml_home)], None
        if target.is_dir():
            if self.bentoml_home is None:  # serving from a folder needs no store: keep ~/bentoml untouched
                self.bentoml_home = Path(self._tmpdir()) / "bentoml_home"
            if (target / "bento.yaml").is_file():
                return [str(target.resolve())], None
            if (target / "bentofile.yaml").is_file():
                return [".", "--working-dir", str(target.resolve())], target.resolve()
            raise ServiceStartError(f"{target} holds neither bento.yaml (a built Bento) nor bentofile.yaml")
        if ":" in str(self.target) and not target.exists():
            return [str(self.target)], None
        raise ServiceStartError(f"nothing to serve at {self.target}: no such file or directory")

    def _tmpdir(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cvpipe-serve-")
        return self._tmp.name

    def log_tail(self, chars: int = 4000) -> str:
        path = self._log_path()
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _log_path(self) -> Path:
        return self.log_path or Path(self._tmpdir()) / "server.log"

    def start(self) -> ServiceProcess:
        args, cwd = self._serve_args()
        if self.port is None:
            self.port = free_port(self.host if self.host not in ("0.0.0.0", "") else "127.0.0.1")
        if self.bentoml_home is not None:
            self.bentoml_home.mkdir(parents=True, exist_ok=True)
        cmd = [*bentoml_cmd(), "serve", *args, "--host", self.host, "--port", str(self.port)]
        log_path = self._log_path()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "ab")
        parent = os.getpid()
        self.proc = subprocess.Popen(cmd, env=child_env(self.bentoml_home, self.workers, self.extra_env),
                                     cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=lambda: die_with_parent(signal.SIGTERM, parent))
        _running.add(self)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        assert self.proc is not None, "wait_ready() before start()"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceStartError(f"bentoml serve exited with code {self.proc.returncode} before it was "
                                        f"ready; server log tail:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise ServiceStartError(f"service at {self.url} not ready after {self.ready_timeout_s:.0f} s; "
                                f"server log tail:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        _running.discard(self)
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)  # the server and its workers share our new session's group
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
