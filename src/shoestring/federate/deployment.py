"""Flower's deployment engine: a SuperLink, one SuperNode per client, and ``flwr run``.

Each is a separate OS process talking to the others over the network - the topology of a real
multi-site federation. On loopback (``superlink`` unset) the stage starts them itself:
``flower-superlink`` on ``port`` and ``flower-supernode`` i on ``port + 1 + i`` with node config
``partition-id=i num-partitions=n`` (each SuperNode starts a fresh ClientApp process per
message); with ``superlink`` set it only submits the run to that SuperLink, whose SuperNodes
must already be connected. The Flower App is written to the work folder: a ``pyproject.toml``
naming :mod:`shoestring.federate.app` and the job file, which every process reads. Runtime
dependency installation is off (everything is already installed; the machine may be offline).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from shoestring.core.errors import ShoestringError
from shoestring.core.processes import stop_group, stop_recorded, wait_listening

__all__ = ["run_deployment_engine"]

APP_MODULE = "shoestring_federation"


def _bin(name: str) -> str:
    here = Path(sys.executable).with_name(name)
    found = str(here) if here.is_file() else shutil.which(name)
    if found is None:
        raise ShoestringError(f"federate: `{name}` is missing; install shoestring[federate]")
    return found


def _env(home: Path) -> dict[str, str]:
    import shoestring

    src = str(Path(shoestring.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    # SuperLink and SuperNode start `flower-superexec`, `flwr-serverapp`, `flwr-clientapp` by name.
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def write_app(folder: Path, job_path: Path) -> None:
    """The Flower App bundle's sources: pyproject.toml + a module re-exporting our apps."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{APP_MODULE}.py").write_text(
        '"""Shoestring federation (generated)."""\n\nfrom shoestring.federate.app import client_app, server_app\n\n'
        '__all__ = ["client_app", "server_app"]\n',
        encoding="utf-8",
    )
    (folder / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "shoestring-federation"
version = "1.0.0"
description = "A Shoestring federate stage run on Flower's deployment engine"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "shoestring"

[tool.flwr.app.components]
serverapp = "{APP_MODULE}:server_app"
clientapp = "{APP_MODULE}:client_app"

[tool.flwr.app.config]
job = "{job_path}"
""",
        encoding="utf-8",
    )


def _write_connection(home: Path, address: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "shoestring"\n\n[superlink.shoestring]\naddress = "{address}"\ninsecure = true\n',
        encoding="utf-8",
    )


@contextlib.contextmanager
def _loopback_federation(port: int, n_clients: int, env: dict[str, str], logs: Path) -> Iterator[list[int]]:
    """SuperLink + ``n_clients`` SuperNodes on 127.0.0.1; yields their pids; stops them after."""
    logs.mkdir(parents=True, exist_ok=True)
    pidfile = logs / "flower.pids"
    stop_recorded(pidfile, lambda cmd: "flower-super" in cmd)  # what a killed run left behind
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(logs / f"{name}.log", "ab") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(p)
        pidfile.write_text(" ".join(str(q.pid) for q in procs))
        return p

    try:
        start([_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
               "--host", "127.0.0.1", "--port", str(port)], "superlink")  # fmt: skip
        wait_listening(port, procs, 120.0, what="federate: the Flower SuperLink", log=logs / "superlink.log")
        for i in range(n_clients):
            start([_bin("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                   "--port", str(port + 1 + i), "--node-config", f"partition-id={i} num-partitions={n_clients}"],
                  f"supernode-{i}")  # fmt: skip
        yield [p.pid for p in procs]
    finally:
        for p in reversed(procs):
            stop_group(p)  # the group holds the SuperNode's SuperExec and app processes
        pidfile.unlink(missing_ok=True)


def run_deployment_engine(job_path: Path, n_clients: int, port: int, superlink: str | None, work: Path,
                          timeout_s: float, groups: list[int] | None = None) -> list[int]:  # fmt: skip
    """Run the federation of the job at ``job_path``; returns the pids of the processes started
    (SuperLink first). Their process groups are appended to ``groups`` (for memory metering)."""
    home, app, logs = work / "flwr-home", work / "flwr-app", work / "flwr-logs"
    write_app(app, job_path)
    logs.mkdir(parents=True, exist_ok=True)
    env = _env(home)
    address = superlink or f"127.0.0.1:{port}"
    _write_connection(home, address)
    started: list[int] = []
    with contextlib.ExitStack() as stack:
        if superlink is None:
            started = stack.enter_context(_loopback_federation(port, n_clients, env, logs))
            if groups is not None:
                groups.extend(started)
        with open(logs / "flwr-run.log", "ab") as out:
            try:
                subprocess.run([_bin("flwr"), "run", str(app), "shoestring", "--stream"], stdout=out,
                               stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False)  # fmt: skip
            except subprocess.TimeoutExpired:
                raise ShoestringError(f"federate: the deployment run did not finish within {timeout_s:.0f} s; "
                                      f"see {logs}") from None  # fmt: skip
    return started
