"""Run the app under uvicorn with a graceful drain on SIGTERM / Ctrl-C."""

from __future__ import annotations

import sys
from types import FrameType

from shoestring.core.auth import require_key_off_loopback
from shoestring.core.processes import bind_tcp
from shoestring.serve.config import ServeConfig

__all__ = ["serve"]


def serve(cfg: ServeConfig) -> None:
    """Load ``cfg.model`` and serve it until SIGTERM/SIGINT, then drain and exit."""
    import uvicorn

    from shoestring.serve.app import create_app
    from shoestring.serve.backends import load_for_serving
    from shoestring.serve.state import api_keys

    # Refused, not warned: a warning scrolls past, and an open port serves the model to anyone.
    require_key_off_loopback(cfg.host, api_keys(cfg), "use the model")
    sock = bind_tcp(cfg.host, cfg.port, inheritable=True)  # fail fast, before the slow model load
    loaded = load_for_serving(cfg)
    if loaded.engine is not None:
        info = loaded.engine.info
        mode = f"batches up to {info.max_seqs} sequences" if info.batched else "serves one request at a time"
        print(f"engine {info.name} ({mode}); {loaded.engine_reason}", file=sys.stderr, flush=True)
    app = create_app(cfg, loaded)
    state = app.state.shoestring

    class DrainingServer(uvicorn.Server):
        """Marks the app as draining first, so /ready says 503 and new requests get 503."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if not state.draining:
                state.draining = True
                state.scheduler.stop_accepting()
                print("draining: finishing in-flight requests, refusing new ones", file=sys.stderr, flush=True)
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after shutting down; a finished drain is a clean exit (code 0).
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    config = uvicorn.Config(
        app,
        log_level="warning",
        timeout_graceful_shutdown=int(cfg.drain_timeout_s) or None,
        backlog=4096,
        timeout_keep_alive=30,
    )
    server = DrainingServer(config)
    host, port = sock.getsockname()[:2]
    # Listen before saying so: a client that connects on the line below is queued by the kernel
    # until uvicorn accepts, not refused (uvicorn itself only listens once it has started).
    sock.listen(config.backlog)
    print(f"serving {loaded.name} ({loaded.task}) on http://{host}:{port}/v1", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    print("stopped", file=sys.stderr, flush=True)
