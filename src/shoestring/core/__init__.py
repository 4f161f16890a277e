"""Core: artifacts, workspace and caching, typed configs, stage registry, recipes."""

from shoestring.core.artifact import Artifact, atomic_write_bytes, atomic_write_json, atomic_write_text
from shoestring.core.config import ArtifactInput, HashedPath, StageConfig, load_yaml, parse_config
from shoestring.core.errors import NotBuiltError, ShoestringError
from shoestring.core.recipe import load_recipe, run_recipe
from shoestring.core.registry import STAGES, get_stage
from shoestring.core.workspace import Stage, StageContext, StageResult, Workspace

__all__ = [
    "STAGES",
    "Artifact",
    "ArtifactInput",
    "HashedPath",
    "NotBuiltError",
    "ShoestringError",
    "Stage",
    "StageConfig",
    "StageContext",
    "StageResult",
    "Workspace",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "get_stage",
    "load_recipe",
    "load_yaml",
    "parse_config",
    "run_recipe",
]
