"""A server cvpipe spawns dies with its parent: SIGKILL the parent (no cleanup code can run) and the
`bentoml serve` process and its workers go away and the port is free again (issue 13 item 4)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

PARENT = """
import json, sys, time, psutil
from cvpipe.serving.process import ServiceProcess
svc = ServiceProcess(sys.argv[1], bentoml_home=sys.argv[2], workers=2).start()
tree = [svc.proc.pid] + [p.pid for p in psutil.Process(svc.proc.pid).children(recursive=True)]
print(json.dumps({"port": svc.port, "pids": tree}), flush=True)
time.sleep(600)
"""


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_when_its_parent_is_sigkilled(packed, tmp_path):
    archive = packed["bento"] / packed["summary"]["bento"]
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(archive), str(tmp_path / "home")],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})
    try:
        line = parent.stdout.readline()
        assert line, "the parent did not start the server"
        started = json.loads(line)
        port, pids = started["port"], started["pids"]
        assert len(pids) >= 3 and not port_is_free(port)  # server + 2 workers, listening
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_until(lambda: not any(alive(p) for p in pids), 30), \
            [p for p in pids if alive(p)]
        assert wait_until(lambda: port_is_free(port), 10)
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in locals().get("pids", []):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
