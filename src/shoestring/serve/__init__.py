"""Serving: an OpenAI-compatible HTTP API with continuous batching, bounded queues, auth, metrics and drift."""

from shoestring.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "load_for_serving", "serve"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # Heavy imports (fastapi, torch) only when used, so `shoestring --help` stays fast.
    if name == "create_app":
        from shoestring.serve.app import create_app

        return create_app
    if name == "load_for_serving":
        from shoestring.serve.backends import load_for_serving

        return load_for_serving
    if name == "serve":
        from shoestring.serve.server import serve

        return serve
    raise AttributeError(name)
