"""``ServerState``: what the app and the routes share (config, model, scheduler, metrics, drift)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shoestring.core.auth import api_keys as shared_api_keys
from shoestring.serve.drift import DriftMonitor, drift_level, load_reference
from shoestring.serve.errors import api_error
from shoestring.serve.metrics import ServerMetrics

if TYPE_CHECKING:
    from shoestring.serve.backends import LoadedModel
    from shoestring.serve.config import ServeConfig

__all__ = ["ServerState", "api_keys"]


def api_keys(cfg: ServeConfig) -> list[bytes]:
    """Keys from the config plus ``$SHOESTRING_API_KEYS`` (comma-separated)."""
    return shared_api_keys(cfg.api_key)


class ServerState:
    """Everything the routes share: config, model, schedulers, metrics, drift, drain flag."""

    def __init__(self, cfg: ServeConfig, loaded: LoadedModel) -> None:
        from shoestring.serve import backends
        from shoestring.serve.generation import GenerationScheduler

        self.cfg, self.loaded = cfg, loaded
        self.metrics = ServerMetrics()
        self.keys = api_keys(cfg)
        self.draining = False
        self.drift: DriftMonitor | None = None
        if cfg.reference:
            self.drift = DriftMonitor(load_reference(cfg.reference), cfg.drift_window, cfg.drift_min_samples)
        self.scheduler: Any = None
        common: dict[str, Any] = {
            "max_batch_size": cfg.max_batch_size,
            "max_queue": cfg.max_queue,
            "batch_timeout_s": cfg.batch_timeout_ms / 1000,
            "observer": self.metrics,
        }
        if loaded.task == "causal-lm":
            self.scheduler = GenerationScheduler(loaded.engine, eos_ids=loaded.eos_ids, **common)
            self.metrics.describe_engine(loaded.engine.info)
        else:
            fns: dict[str, Callable[[list[Any]], list[Any]]] = {
                "embedding": lambda items: backends.embed(loaded, items),
                "classification": lambda items: backends.classify(loaded, items),
                "masked-lm": lambda items: backends.fill_mask(loaded, items),
                "recommendation": lambda items: [loaded.recommender.recommend(h, k) for h, k in items],  # type: ignore[union-attr]
            }
            self.scheduler = backends.TaskBatcher(fns[loaded.task], **common)

    def accepts(self) -> bool:
        return not self.draining and getattr(self.scheduler, "fatal_error", None) is None

    def model_ids(self) -> set[str]:
        return {self.loaded.name, self.cfg.model}

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested not in self.model_ids():
            raise api_error(
                404, f"model '{requested}' is not served here; this server serves '{self.loaded.name}'", "model_not_found"
            )

    def require_task(self, *tasks: str) -> None:
        if self.loaded.task not in tasks:
            raise api_error(
                400,
                f"this endpoint needs a {' or '.join(tasks)} model but this server serves a {self.loaded.task} model "
                f"('{self.loaded.name}'); start `shoestring serve` with a suitable model",
                "wrong_task",
            )

    def observe_drift(self, inputs: dict[str, Any], predictions: dict[str, Any] | None = None) -> None:
        if self.drift is not None:
            self.drift.observe(inputs, predictions)

    def model_card(self) -> dict[str, Any]:
        """The /v1/models entry: id, task and, for generation, the engine and how it batches."""
        card: dict[str, Any] = {"id": self.loaded.name, "object": "model", "created": 0, "owned_by": "shoestring",
                                "task": self.loaded.task}  # fmt: skip
        engine = self.loaded.engine
        if engine is not None:
            info = engine.info
            card["engine"] = {
                "name": info.name,
                "batched": info.batched,
                "max_sequences": info.max_seqs,
                "serves": "many sequences per step" if info.batched else "one request at a time",
                "context_length": info.context_length,
                "prefill_chunk": info.prefill_chunk,
                "chosen": self.loaded.engine_reason,
                **info.details,
            }
        return card

    def refresh_gauges(self) -> None:
        m = self.metrics
        m.refresh()
        m.queue_depth.set(self.scheduler.queue_depth)
        m.running.set(self.scheduler.running)
        m.ready.set(1 if self.accepts() else 0)
        if self.loaded.engine is not None:
            for name, value in self.loaded.engine.stats().items():
                m.engine_stat.labels(name).set(value)
        if self.drift is not None:
            m.drift_samples.set(self.drift.samples())
            for name, value in self.drift.scores().items():
                m.drift_psi.labels(name).set(value)
                m.drift_level.labels(name).set(drift_level(value))
