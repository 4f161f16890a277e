"""The stage registry: which stages exist and where each one lives.

Each stage module (``shoestring.<package>.stage``) defines, at light import cost:

* ``CONFIG`` - its :class:`~shoestring.core.config.StageConfig` subclass,
* ``KIND`` - the kind of artifact it produces (``dataset``, ``plan``, ``model`` ...),
* ``SCHEMA_VERSION`` - bumped when the payload layout changes (invalidates caches),
* ``SUMMARY`` - one line for ``--help``,
* ``build(cfg, ctx) -> dict`` - writes the payload into ``ctx.out_dir``; returns stats;
* optionally ``stale(artifact) -> str | None`` - why a cached artifact no longer holds although
  its config and inputs are the same (the plan: this machine was calibrated again); None = reuse it.

Heavy libraries (torch, transformers, ...) are imported inside ``build`` so that
``shoestring --help`` stays fast.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from shoestring.core.errors import NotBuiltError, ShoestringError
from shoestring.core.workspace import Stage

__all__ = ["STAGES", "get_stage", "stage_names"]

# verb -> module that implements it. The order is the order of the flow.
STAGES: dict[str, str] = {
    "curate": "shoestring.data.stage",
    "plan": "shoestring.plan.stage",
    "train": "shoestring.train.stage",
    "federate": "shoestring.federate.stage",
    "evaluate": "shoestring.evaluate.stage",
    "compress": "shoestring.compress.stage",
    "export": "shoestring.compress.export_stage",
    "report": "shoestring.report.stage",
    "assess": "shoestring.assess.stage",
}


def stage_names() -> list[str]:
    return list(STAGES)


def _import_stage_module(name: str) -> ModuleType:
    module = STAGES[name]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (err.name == module or module.startswith(err.name + ".")):
            raise NotBuiltError(f"stage '{name}' is not built yet in this version of shoestring") from None
        raise


def get_stage(name: str) -> Stage:
    """Load a stage by name; unknown names and unbuilt stages are one-line errors."""
    if name not in STAGES:
        raise ShoestringError(f"unknown stage '{name}'; known stages: {', '.join(STAGES)}")
    mod = _import_stage_module(name)
    return Stage(
        name=name,
        kind=mod.KIND,
        config=mod.CONFIG,
        schema_version=int(getattr(mod, "SCHEMA_VERSION", 1)),
        summary=str(getattr(mod, "SUMMARY", "")),
        build=mod.build,
        stale=getattr(mod, "stale", None),
    )
