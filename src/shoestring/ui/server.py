"""Run the dashboard under uvicorn: bind first (a taken port is a one-line error), then serve."""

from __future__ import annotations

import socket
import sys

from shoestring.core.auth import api_keys, require_key_off_loopback
from shoestring.core.processes import bind_tcp
from shoestring.ui.config import UiConfig

__all__ = ["bind", "serve_ui"]


def bind(host: str, port: int) -> socket.socket:
    """The dashboard's listening socket (not inherited by the runs it launches)."""
    sock = bind_tcp(host, port)
    sock.listen(128)
    return sock


def serve_ui(cfg: UiConfig) -> None:
    """Serve the dashboard until Ctrl-C / SIGTERM."""
    import uvicorn

    from shoestring.ui.app import create_app

    keys = api_keys(cfg.api_key)
    require_key_off_loopback(cfg.host, keys, "launch runs and read every workspace")
    sock = bind(cfg.host, cfg.port)
    app = create_app(cfg)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    hint = f" (log in with your API key, or open {url}?key=KEY)" if keys else ""
    print(f"shoestring ui on {url}{hint}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])
