"""The server's OpenAPI document, true to what it answers.

FastAPI's generated document describes a generic app: every body route "returns" 422 and an
untyped 200, and every task's route is listed whatever model is loaded. Clients and API
fuzzers (tests/serve/test_fuzz_api.py) read it as the contract, so this module rewrites it to
the contract the server keeps: only the routes of the served task, the status codes the
routes really send (400 not 422, OpenAI error envelopes), typed 200 bodies, the served
model id as the one ``model`` value, and the bearer scheme on every protected route when
an API key is configured.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter

if TYPE_CHECKING:
    from fastapi import FastAPI

    from shoestring.serve.state import ServerState

__all__ = ["ENDPOINT_TASK", "OPEN_PATHS", "server_openapi"]

OPEN_PATHS = ("/health", "/ready")
"""Routes answered without an API key (load balancers probe them)."""

ENDPOINT_TASK = {
    "/v1/chat/completions": "causal-lm",
    "/v1/completions": "causal-lm",
    "/v1/embeddings": "embedding",
    "/v1/classify": "classification",
    "/v1/fill-mask": "masked-lm",
    "/v1/recommend": "recommendation",
}
"""The model task each task route needs; the others answer 400 'wrong_task' and are not listed."""


class _ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """The OpenAI error envelope every 4xx/5xx carries."""

    error: _ErrorDetail


class _Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str


class _ChatChoice(BaseModel):
    index: int
    message: _ChatMessageOut
    finish_reason: Literal["stop", "length"]
    logprobs: None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[_ChatChoice]
    usage: _Usage


class _TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[_TextChoice]
    usage: _Usage


class _ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class _ChatChunkChoice(BaseModel):
    index: int
    delta: _ChatDelta
    finish_reason: Literal["stop", "length"] | None
    logprobs: None


class ChatCompletionChunk(BaseModel):
    """One streamed event; the last before [DONE] has no choices and the usage (stream_options.include_usage)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[_ChatChunkChoice]
    usage: _Usage | None = None


class _TextChunkChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: None


class TextCompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[_TextChunkChoice]
    usage: _Usage | None = None


class _Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float]


class _EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[_Embedding]
    model: str
    usage: _EmbeddingUsage


class _Classification(BaseModel):
    index: int
    label: str
    score: float
    scores: dict[str, float]


class ClassificationList(BaseModel):
    object: Literal["list"]
    data: list[_Classification]
    model: str


class _Filler(BaseModel):
    token: str
    token_id: int
    score: float


class FillMaskList(BaseModel):
    object: Literal["list"]
    data: list[list[_Filler]]
    """Per mask token in the input, the top_k fillers, most likely first."""
    model: str


class _Recommendation(BaseModel):
    rank: int
    item: int | str
    score: float | None = None


class RecommendationList(BaseModel):
    object: Literal["list"]
    data: list[_Recommendation]
    model: str


class _ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    task: str
    engine: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[_ModelCard]


class Health(BaseModel):
    status: Literal["ok", "error"]
    model: str
    task: str
    error: str | None


class Readiness(BaseModel):
    ready: bool
    draining: bool
    queue_depth: int


_OK_BODY = {
    "/v1/chat/completions": ChatCompletion,
    "/v1/completions": TextCompletion,
    "/v1/embeddings": EmbeddingList,
    "/v1/classify": ClassificationList,
    "/v1/fill-mask": FillMaskList,
    "/v1/recommend": RecommendationList,
    "/v1/models": ModelList,
    "/health": Health,
    "/ready": Readiness,
}
_STREAMS = {"/v1/chat/completions": ChatCompletionChunk, "/v1/completions": TextCompletionChunk}
_ERRORS = {
    400: "invalid request: the message names the field and what to send",
    404: "the model named in the request is not served here",
    413: "request body larger than --max-body-bytes",
    429: "queue full (--max-queue); retry after Retry-After seconds",
    503: "draining, unhealthy or timed out (--request-timeout-s); retry after Retry-After seconds",
}


def _ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """A $ref to ``model``'s schema, adding it (and its nested models) to ``components``."""
    schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _events(chunk: type[BaseModel], error: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Server-sent events (the schema of one event): JSON chunks or an in-band error, then ``[DONE]``."""
    payload = {"type": "string", "contentMediaType": "application/json",
               "contentSchema": {"anyOf": [_ref(chunk, components), error]}}  # fmt: skip
    data = {"anyOf": [{"const": "[DONE]"}, payload]}
    return {"schema": {"type": "object", "required": ["data"], "properties": {"data": data}},
            "description": "stream=true: 'data: <chunk>' events, an error envelope if generation fails, then 'data: [DONE]'"}  # fmt: skip


def _pin_request_fields(components: dict[str, Any], model_id: str, mask: str | None) -> None:
    """Request bodies accept only the served model id; fill-mask inputs must hold the mask token."""
    for name, schema in components.items():
        props = schema.get("properties", {})
        if "model" in props and name.endswith("Request"):
            optional = "model" not in schema.get("required", [])
            pinned: dict[str, Any] = {"type": "string", "enum": [model_id]}
            props["model"] = {"anyOf": [pinned, {"type": "null"}]} if optional else pinned
        if name == "FillMaskRequest" and mask:
            props["input"] = {"type": "string", "pattern": re.escape(mask)}


def server_openapi(app: FastAPI, state: ServerState) -> dict[str, Any]:
    """The OpenAPI document of ``app`` as served with ``state``'s model and keys."""
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    task = state.loaded.task
    paths = {p: ops for p, ops in doc["paths"].items() if ENDPOINT_TASK.get(p, task) == task}
    error = _ref(ErrorEnvelope, components)
    for path, ops in paths.items():
        for method, op in ops.items():
            responses: dict[str, Any] = {}
            if path == "/metrics":
                text = {"text/plain": {"schema": {"type": "string"}}}
                responses["200"] = {"description": "Prometheus text exposition", "content": text}
            else:
                responses["200"] = _json(_ref(_OK_BODY[path], components), "success")
            if path in _STREAMS:
                responses["200"]["content"]["text/event-stream"] = _events(_STREAMS[path], error, components)
            if method == "post":
                responses.update({str(code): _json(error, text) for code, text in _ERRORS.items()})
            if path == "/health":
                responses["500"] = _json(_ref(Health, components), "the model thread died: replace this replica")
            if path == "/ready":
                responses["503"] = _json(_ref(Readiness, components), "draining or unhealthy")
            if state.keys and path not in OPEN_PATHS:
                responses["401"] = _json(error, "missing or wrong API key")
                op["security"] = [{"bearer": []}]
            op["responses"] = responses
    doc["paths"] = paths
    if state.keys:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    mask = getattr(state.loaded.tokenizer, "mask_token", None)
    _pin_request_fields(components, state.loaded.name, mask)
    return doc
