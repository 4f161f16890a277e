"""``UiConfig``: the flags of ``shoestring ui`` (and the keys of its ``--config`` YAML)."""

from __future__ import annotations

from pydantic import Field

from shoestring.core.config import StageConfig

__all__ = ["UiConfig"]


class UiConfig(StageConfig):
    """Where the dashboard looks, where it listens and who may use it."""

    roots: list[str] = Field(default_factory=lambda: [".shoestring"])
    """Folders searched for workspaces (three levels deep), relative to --cwd."""
    host: str = "127.0.0.1"
    """Interface to bind; the default accepts local connections only (anything but loopback is refused without --api-key or $SHOESTRING_API_KEYS)."""
    port: int = Field(8600, ge=0, le=65535)
    """TCP port to listen on (0 picks a free one and prints it)."""
    api_key: list[str] = Field(default_factory=list)
    """Key a browser logs in with (or sends as 'Authorization: Bearer KEY'); repeatable. Keys in $SHOESTRING_API_KEYS (comma-separated) are added. None = no auth."""
    recipes: list[str] = Field(default_factory=lambda: ["recipes"])
    """Folders whose *.yaml recipes the Launch page offers, relative to --cwd."""
    cwd: str = "."
    """Folder runs are launched in (recipes name their files relative to it)."""
    state_dir: str = ".shoestring/ui"
    """Where launched runs' logs and records are kept, relative to --cwd."""
