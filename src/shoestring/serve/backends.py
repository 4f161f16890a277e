"""Load the served model for its task, and the batched functions the task endpoints call."""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from shoestring.core.errors import ShoestringError
from shoestring.models.tasks import Task, task_of
from shoestring.serve.generation import NotAccepting, QueueFull

if TYPE_CHECKING:
    import asyncio

    from shoestring.serve.config import ServeConfig

__all__ = ["LoadedModel", "Recommender", "TaskBatcher", "detect_task", "load_for_serving"]

# Tasks the server has endpoints for (a manifest task outside these falls through to the config).
_SERVED = (Task.CAUSAL_LM, Task.CLASSIFICATION, Task.MASKED_LM, Task.EMBEDDING, Task.RECOMMENDATION)


class Recommender(Protocol):
    """What ``shoestring.train.recsys.load_recommender`` returns."""

    def recommend(self, history: list[Any], k: int) -> list[Any]: ...


@dataclass
class LoadedModel:
    """The served model and what the endpoints need to know about it."""

    task: str
    name: str
    model: Any = None
    tokenizer: Any = None
    context_length: int = 2048
    recommender: Recommender | None = None
    device: str = "cpu"
    """Where the model runs ('cpu' or 'cuda')."""
    engine: Any = None
    """The generation engine (causal LMs only): see ``shoestring.serve.engine``."""
    engine_reason: str = ""
    """Why this engine serves (the flag, or what ``--engine auto`` measured)."""
    eos_ids: set[int] = field(default_factory=set)
    """Token ids that end a generation."""


def detect_task(spec: str) -> str:
    """The serving task of a model spec, from its manifest, package entry or config."""
    from shoestring.models import load_config, packaged_model

    p = Path(spec).expanduser()
    if (p / "manifest.json").is_file():
        manifest = json.loads((p / "manifest.json").read_text())
        task = str(manifest.get("task") or (manifest.get("stats") or {}).get("task") or "")
        found = task_of(task)
        if found is not None and found in _SERVED:
            return found.value
        if (p / "model" / "shoestring_model.json").is_file():
            return "recommendation"
    pm = packaged_model(spec)
    if pm is not None:
        return pm.task
    arch = (getattr(load_config(spec), "architectures", None) or [""])[0]
    if arch.endswith("ForCausalLM"):
        return "causal-lm"
    if arch.endswith("ForSequenceClassification"):
        return "classification"
    if arch.endswith("ForMaskedLM"):
        return "masked-lm"
    return "embedding"


def load_for_serving(cfg: ServeConfig) -> LoadedModel:
    """Load ``cfg.model`` for its task: a generation engine for causal LMs, else the model in eval mode."""
    import torch

    from shoestring.models import load_model, load_tokenizer
    from shoestring.serve.engine_select import model_threads

    torch.set_num_threads(model_threads(cfg))
    task = detect_task(cfg.model) if cfg.task == "auto" else cfg.task
    name = cfg.model_name or cfg.model
    if task == "recommendation":
        try:
            from shoestring.train.recsys import load_recommender

            rec = load_recommender(cfg.model)
        except (ImportError, NotImplementedError):
            raise ShoestringError(
                "serving a recommender needs shoestring.train.recsys.load_recommender, which this version lacks"
            ) from None
        return LoadedModel(task, name, recommender=rec)
    if cfg.engine != "auto" and task != "causal-lm":
        raise ShoestringError(f"--engine {cfg.engine} serves generation; this is a {task} model: drop --engine")
    tok = load_tokenizer(cfg.model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    if task == "causal-lm":
        return _load_generation(cfg, name, tok)
    model = load_model(cfg.model, task)  # type: ignore[arg-type]
    if hasattr(model, "merge_and_unload"):  # a PEFT adapter: fold it into the weights for speed
        model = model.merge_and_unload()  # type: ignore[operator]
    model.eval()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ShoestringError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        cfg.dtype, torch.bfloat16 if device == "cuda" else torch.float32
    )
    model = model.to(device=device, dtype=dtype)  # type: ignore[call-arg]
    ctx = int(getattr(model.config, "max_position_embeddings", 0) or getattr(tok, "model_max_length", 2048))
    ctx = min(ctx, cfg.max_context) if cfg.max_context else ctx
    return LoadedModel(task, name, model=model, tokenizer=tok, context_length=ctx, device=device)


def _load_generation(cfg: ServeConfig, name: str, tok: Any) -> LoadedModel:
    """A causal LM behind the engine ``--engine`` picks, with its end-of-sequence ids."""
    from shoestring.models import load_config
    from shoestring.serve.engine_select import build_engine

    config = load_config(cfg.model)
    ctx = int(getattr(config, "max_position_embeddings", 0) or getattr(tok, "model_max_length", 2048))
    ctx = min(ctx, cfg.max_context) if cfg.max_context else ctx
    choice = build_engine(cfg, ctx)
    eos = getattr(getattr(choice.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    eos_ids = {*(eos if isinstance(eos, list) else [eos]), tok.eos_token_id} - {None}
    device = str(getattr(choice.model, "device", "cpu")) if choice.model is not None else "cpu"
    return LoadedModel("causal-lm", name, model=choice.model, tokenizer=tok,
                       context_length=choice.engine.info.context_length, device=device, engine=choice.engine,
                       engine_reason=choice.reason, eos_ids={int(e) for e in eos_ids})  # fmt: skip


# ---------------------------------------------------------------------- task functions
def embed(lm: LoadedModel, texts: list[str]) -> list[tuple[list[float], int]]:
    """L2-normalised sentence vectors and the token count of each text, by the one embedding
    rule of ``shoestring embed`` (:func:`shoestring.models.inference.embed_batch`)."""
    from shoestring.models.inference import embed_batch

    vecs, counts = embed_batch(lm.model, lm.tokenizer, texts, max_length=lm.context_length, device=lm.device)
    return [(v, n) for v, n in zip(vecs.tolist(), counts, strict=True)]


def classify(lm: LoadedModel, texts: list[str]) -> list[dict[str, Any]]:
    """Label, probability and all class probabilities per text."""
    import torch

    enc = lm.tokenizer(texts, padding=True, truncation=True, max_length=lm.context_length, return_tensors="pt").to(lm.device)
    with torch.inference_mode():
        probs = torch.softmax(lm.model(**enc).logits.float(), -1)  # (B, C)
    id2label = getattr(lm.model.config, "id2label", None) or {}
    out = []
    for row, n in zip(probs.tolist(), enc["attention_mask"].sum(-1).tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        names = [str(id2label.get(i, i)) for i in range(len(row))]
        out.append({"label": names[best], "score": row[best], "scores": dict(zip(names, row, strict=True)), "tokens": int(n)})
    return out


def fill_mask(lm: LoadedModel, items: list[tuple[str, int]]) -> list[list[list[dict[str, Any]]]]:
    """For each (text, top_k): per mask token, the top_k fillers with probability."""
    import torch

    tok = lm.tokenizer
    enc = tok([t for t, _ in items], padding=True, truncation=True, max_length=lm.context_length, return_tensors="pt").to(lm.device)
    with torch.inference_mode():
        probs = torch.softmax(lm.model(**enc).logits.float(), -1)  # (B, T, V)
    out = []
    for i, (_, k) in enumerate(items):
        where = (enc["input_ids"][i] == tok.mask_token_id).nonzero().flatten().tolist()
        per_mask = []
        for pos in where:
            p, ids = probs[i, pos].topk(k)
            per_mask.append(
                [
                    {"token": tok.decode([t]).strip(), "token_id": t, "score": s}
                    for t, s in zip(ids.tolist(), p.tolist(), strict=True)
                ]
            )
        out.append(per_mask)
    return out


class TaskBatcher:
    """Groups concurrent requests for a non-generative task into one model call.

    ``fn(items) -> results`` runs on a worker thread; an idle worker waits
    ``batch_timeout_s`` after the first item so a burst becomes one batch.
    """

    def __init__(
        self,
        fn: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int,
        max_queue: int,
        batch_timeout_s: float,
        observer: Any = None,
    ) -> None:
        self.fn = fn
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue = max(1, max_queue)
        self.batch_timeout_s = batch_timeout_s
        self.observer = observer
        self._waiting: collections.deque[tuple[Any, asyncio.Future[Any], asyncio.AbstractEventLoop]] = (
            collections.deque()
        )
        self._in_flight = 0
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self.seconds_per_batch_ema = 0.05

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._in_flight

    def idle(self) -> bool:
        return not self._waiting and self._in_flight == 0

    def submit(self, item: Any, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any]:
        with self._cond:
            if not self._accepting or self._stop:
                raise NotAccepting("server is shutting down")
            if len(self._waiting) + self._in_flight >= self.max_queue:
                raise QueueFull()
            fut: asyncio.Future[Any] = loop.create_future()
            self._waiting.append((item, fut, loop))
            self._cond.notify()
            return fut

    def retry_after_s(self) -> int:
        batches = (len(self._waiting) + self._in_flight) / self.max_batch_size
        return max(1, min(60, round(batches * self.seconds_per_batch_ema)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shoestring-task", daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def shutdown(self, timeout_s: float = 5.0) -> None:
        with self._cond:
            self._accepting, self._stop = False, True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting:
                    self._cond.wait(0.5)
                if self._stop:
                    for _, fut, loop in self._waiting:
                        _resolve(loop, fut, error=NotAccepting("server is shutting down"))
                    self._waiting.clear()
                    return
                end = time.monotonic() + self.batch_timeout_s
                while len(self._waiting) < self.max_batch_size and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch: list[tuple[Any, asyncio.Future[Any], asyncio.AbstractEventLoop]] = []
                while self._waiting and len(batch) < self.max_batch_size:
                    entry = self._waiting.popleft()
                    if not entry[1].cancelled():  # the client went away while queued
                        batch.append(entry)
                self._in_flight = len(batch)
            if not batch:
                continue
            t0 = time.perf_counter()
            try:
                results = self.fn([item for item, _, _ in batch])
                for (_, fut, loop), res in zip(batch, results, strict=True):
                    _resolve(loop, fut, result=res)
            except Exception as err:  # one bad batch must not kill the worker
                for _, fut, loop in batch:
                    _resolve(loop, fut, error=err)
            self.seconds_per_batch_ema = 0.8 * self.seconds_per_batch_ema + 0.2 * (time.perf_counter() - t0)
            if self.observer is not None:
                self.observer.on_batch(len(batch))
            with self._cond:
                self._in_flight = 0


def _resolve(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], *, result: Any = None, error: Any = None) -> None:
    def settle() -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
        loop.call_soon_threadsafe(settle)
