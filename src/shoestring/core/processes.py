"""Child processes that serve on loopback ports: is a port free, wait until one listens, stop a group.

The stages that start servers of their own (a private Ray head, Flower's SuperLink and SuperNodes,
the nodes of a :class:`~shoestring.core.local_cluster.LocalCluster`) start each in a new session,
so the process and everything it forks share one process group that :func:`stop_group` ends.
A run killed with ``-9`` cannot stop its children; it records their pids in a file, and the next
run in the same folder stops them with :func:`stop_recorded`. :func:`pid_alive` says whether the
process that wrote a file (a run record, a temporary) still runs, pid reuse included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from shoestring.core.errors import ShoestringError

__all__ = ["bind_tcp", "pid_alive", "port_free", "stop_group", "stop_recorded", "wait_listening"]


def bind_tcp(host: str, port: int, *, inheritable: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (IPv6 when the host has a colon; port 0: any free one),
    not yet listening; a port that is taken or an address that is not this machine's is one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ShoestringError(
            f"cannot listen on {host}:{port}: {err.strerror}; pick another --port or stop what is using it"
        ) from None
    sock.set_inheritable(inheritable)
    return sock


def pid_alive(pid: int, *, since: Path | None = None) -> bool:
    """Whether a process with this id exists (a zombie counts as gone); with ``since``, only if it
    started before ``since`` was last written: a process that started later took a killed run's
    pid and is not the writer of that file or folder (Linux /proc; elsewhere the pid decides)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not running anything
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return True
    if fields[0] == "Z":
        return False
    return since is None or not _started_after(int(fields[19]), since)


def _started_after(start_ticks: int, path: Path) -> bool:
    """Whether a process that started ``start_ticks`` clock ticks after boot started after ``path``'s
    last write (``/proc/stat``'s btime is whole seconds, hence the 2 s margin)."""
    try:
        boot = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime"))
        made = path.stat().st_mtime
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return boot + start_ticks / os.sysconf("SC_CLK_TCK") > made + 2


def port_free(port: int) -> bool:
    """True if nothing holds 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_listening(port: int, procs: Sequence[subprocess.Popen[bytes]], timeout: float, *, what: str,
                   log: Path | None = None, poll_s: float = 0.5) -> None:  # fmt: skip
    """Return once something accepts connections on 127.0.0.1:``port``.

    A one-line error naming ``what`` if one of ``procs`` exits first (with the last 400 characters
    of ``log`` when given, else the command) or if nothing listens within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                tail = log.read_text(errors="replace")[-400:].strip() if log is not None and log.is_file() else ""
                raise ShoestringError(f"{what} exited ({p.returncode}) while starting: {tail or p.args}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(poll_s)
    raise ShoestringError(f"{what} did not open 127.0.0.1:{port} within {timeout:.0f} s; the machine may be overloaded")


def stop_group(proc: subprocess.Popen[bytes], *, grace_s: float = 30.0) -> None:
    """End ``proc``'s process group (it must lead one: ``start_new_session=True``).

    SIGTERM first and up to ``grace_s`` seconds to exit (0: SIGKILL at once, the way a machine
    dies); then SIGKILL to the group in any case, because children that outlive their parent
    (Ray workers, Flower's app processes) stay in it.
    """
    if grace_s > 0 and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def stop_recorded(pidfile: Path, is_ours: Callable[[str], bool]) -> None:
    """SIGKILL the process groups of the pids in ``pidfile`` (whitespace-separated) whose command
    line passes ``is_ours``, then remove the file. A pid that is gone, or was reused by another
    program, is left alone."""
    if not pidfile.is_file():
        return
    for word in pidfile.read_text().split():
        with contextlib.suppress(ValueError, psutil.Error, ProcessLookupError, PermissionError):
            pid = int(word)
            if is_ours(" ".join(psutil.Process(pid).cmdline())):
                os.killpg(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
