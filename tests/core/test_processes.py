"""Child processes on loopback ports: waiting for one to listen, stopping its group, stale pids."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from shoestring.core.errors import ShoestringError
from shoestring.core.processes import port_free, stop_group, stop_recorded, wait_listening

# A parent that forks a child (same process group) and then serves on the port it is given.
SERVER = """
import socket, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(float(sys.argv[2]))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
time.sleep(600)
"""


def _a_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(port: int, delay_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(delay_s)], stdout=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


def test_wait_listening_returns_when_the_port_opens_and_stop_group_ends_the_forked_child() -> None:
    port = _a_free_port()
    proc = _start(port, 0.5)
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        wait_listening(port, [proc], 60.0, what="the toy server", poll_s=0.1)
        assert not port_free(port)
    finally:
        stop_group(proc, grace_s=5)
    assert proc.poll() is not None
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the child in the group outlived stop_group"
        time.sleep(0.1)
    assert port_free(port)


def test_wait_listening_names_the_process_and_its_log_when_it_exits_first(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; print('bad flag --x'); sys.exit(3)"], stdout=out)
    with pytest.raises(ShoestringError, match=r"the toy server exited \(3\) while starting: bad flag --x"):
        wait_listening(_a_free_port(), [proc], 60.0, what="the toy server", log=log, poll_s=0.1)


def test_wait_listening_gives_up_after_the_timeout() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        with pytest.raises(ShoestringError, match=r"did not open 127\.0\.0\.1:\d+ within 1 s"):
            wait_listening(_a_free_port(), [proc], 1.0, what="the toy server", poll_s=0.1)
    finally:
        stop_group(proc, grace_s=0)


def test_stop_recorded_kills_only_the_recorded_processes_that_are_ours(tmp_path: Path) -> None:
    ours = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "ours-marker"], start_new_session=True
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    pidfile = tmp_path / "run.pids"
    pidfile.write_text(f"{ours.pid} {other.pid} not-a-pid 999999999")
    try:
        stop_recorded(pidfile, lambda cmd: "ours-marker" in cmd)
        assert ours.wait(timeout=10) == -9
        assert other.poll() is None
        assert not pidfile.exists()
        stop_recorded(pidfile, lambda cmd: True)  # no file: nothing to do
    finally:
        stop_group(ours, grace_s=0)
        stop_group(other, grace_s=0)
