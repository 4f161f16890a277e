"""Run the dashboard under uvicorn: bind first (a taken port is a one-line error), then serve."""

from __future__ import annotations

import socket
import sys

from shoestring.core.auth import api_keys, require_key_off_loopback
from shoestring.core.errors import ShoestringError
from shoestring.ui.config import UiConfig

__all__ = ["bind", "serve_ui"]


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ShoestringError(f"cannot listen on {host}:{port} ({err.strerror}); pass --port with a free port") from None
    sock.listen(128)
    sock.set_inheritable(False)
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
