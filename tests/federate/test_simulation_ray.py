"""The simulation engine's private Ray head (core.local_cluster) does not outlive a run that is killed."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

_RUN = ("import sys, time\nfrom pathlib import Path\nfrom shoestring.federate.simulation import private_ray\n"
        "with private_ray(1, Path(sys.argv[1])) as (address, pid):\n    print(pid, address, flush=True)\n"
        "    time.sleep(600)\n")  # fmt: skip


def _left(head: int, temp: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            ours = temp in " ".join(p.info["cmdline"] or []) or os.getpgid(p.pid) == head
            if ours and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out


def test_private_ray_head_dies_with_a_killed_run(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    run = subprocess.Popen([sys.executable, "-c", _RUN, str(tmp_path / "ray.log")], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        line = run.stdout.readline() if run.stdout else ""
        assert line, f"the head did not start: {run.stderr.read()[-2000:] if run.stderr else ''}"
        head = int(line.split()[0])
        assert line.split()[1].startswith("127.0.0.1:21")
        temp = (tmp_path / "ray-head.pid").read_text().split()[1]
        assert _left(head, temp), "no Ray process found for the running head"
    finally:
        run.kill()  # like kill -9 of the stage: no finally block runs in it
        run.wait()
    deadline = time.monotonic() + 120
    while (_left(head, temp) or Path(temp).exists()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _left(head, temp), "Ray processes outlived the killed run"
    assert not Path(temp).exists()
