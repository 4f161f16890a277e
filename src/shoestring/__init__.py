"""Shoestring: raw multi-source data to a trained, compressed, evaluated and served model,
with the compute plan (memory, time, cost) known before money is spent."""

from shoestring.core import Artifact, ShoestringError, Workspace, get_stage, run_recipe

__version__ = "0.1.0"

__all__ = ["Artifact", "ShoestringError", "Workspace", "__version__", "get_stage", "run_recipe"]
