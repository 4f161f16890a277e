"""A tiny real stage used by the core tests: it counts lines of a hashed input file."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Any, Literal

from shoestring.core.config import ArtifactInput, HashedPath, NotHashed, StageConfig
from shoestring.core.workspace import StageContext

KIND = "toy"
SCHEMA_VERSION = 1
SUMMARY = "Count the lines of a file (test stage)."


class ToyConfig(StageConfig):
    source: Annotated[Path, HashedPath()]
    """Text file whose lines are counted."""
    upstream: Annotated[str | None, ArtifactInput("toy")] = None
    """An earlier toy artifact whose count is added."""
    factor: int = 1
    """Multiply the count by this."""
    mode: Literal["plain", "double"] = "plain"
    """How to count."""
    threads: Annotated[int, NotHashed()] = 1
    """How many threads to count with (does not change the count, so not hashed)."""
    crash_after: int | None = None
    """Kill this process with SIGKILL after this many lines (crash test)."""


CONFIG = ToyConfig


def build(cfg: ToyConfig, ctx: StageContext) -> dict[str, Any]:
    done = ctx.work_dir / "progress.txt"
    start = int(done.read_text()) if done.exists() else 0
    lines = cfg.source.read_text().splitlines()
    for i in range(start, len(lines)):
        done.write_text(str(i + 1))
        if cfg.crash_after is not None and i + 1 >= cfg.crash_after and start == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    count = len(lines) * cfg.factor * (2 if cfg.mode == "double" else 1)
    if "upstream" in ctx.inputs:
        count += int(ctx.inputs["upstream"].stats["count"])
    (ctx.out_dir / "count.txt").write_text(str(count))
    return {"count": count, "resumed_from": start}
