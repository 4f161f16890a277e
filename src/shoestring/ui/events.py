"""Server-sent events for a run (and the launch that started it): status, new metric rows, log lines.

The stream sends ``run`` when the run record changes (with the fragment URL to re-fetch),
``rows`` when training logged new rows, ``log`` with new log text, and ``end`` once the
run and its process are finished; the page's script re-fetches the server-rendered
fragment, so the charts are drawn by one piece of code.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from shoestring.ui.launch import Launch, Launcher, read_log
from shoestring.ui.live import run_progress
from shoestring.ui.store import Store, WorkspaceView

__all__ = ["find_launch_run", "stream"]

POLL_S = 0.5
FINISHED = ("done", "failed", "cancelled", "interrupted")


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def find_launch_run(store: Store, launch: Launch) -> tuple[WorkspaceView, dict[str, Any]] | None:
    """The run record the launched process wrote (matched by its pid)."""
    root = launch.extra.get("workspace_resolved")
    if not root:
        return None
    ws = store.workspace_of(root)
    for r in ws.runs():
        if int(r.get("pid") or -1) == launch.pid:
            return ws, r
    return None


async def stream(store: Store, launcher: Launcher, *, ws: WorkspaceView | None, run_id: str | None,
                 launch_id: str | None, log_offset: int, disconnected: Callable[[], Any]) -> AsyncIterator[bytes]:
    """Events until the run has finished and its log is read (or the client leaves)."""
    last_sig: str | None = None
    last_rows = -1
    offset = log_offset
    yield b"retry: 2000\n\n"
    while not await disconnected():
        launch = launcher.get(launch_id) if launch_id else None
        found: tuple[WorkspaceView, dict[str, Any]] | None = None
        if ws is not None and run_id is not None:
            found = next(((ws, r) for r in ws.runs() if str(r.get("run_id")) == run_id), None)
        elif launch is not None:
            found = find_launch_run(store, launch)
        if found is not None:
            fws, run = found
            sig = json.dumps(run, sort_keys=True, default=str)
            if sig != last_sig:
                last_sig = sig
                yield _event("run", {"status": run.get("status"), "url": f"/ws/{fws.id}/runs/{run.get('run_id')}",
                                     "fragment": f"/fragment/ws/{fws.id}/runs/{run.get('run_id')}"})
            rows = sum(len(p.rows) for p in run_progress(store, fws, run))
            if rows != last_rows:
                if last_rows >= 0:
                    yield _event("rows", {"rows": rows})
                last_rows = rows
        if launch is not None:
            text, offset = read_log(launch.log, offset)
            if text:
                yield _event("log", {"text": text, "offset": offset})
        process_done = launch is None or launch.status != "running"
        run_done = found is None or found[1].get("status") in FINISHED
        if process_done and run_done and (launch is None or not read_log(launch.log, offset)[0]):
            yield _event("end", {"status": (found[1].get("status") if found else launch.status if launch else "?"),
                                 "returncode": launch.returncode if launch else None})
            return
        await asyncio.sleep(POLL_S)
