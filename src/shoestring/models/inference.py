"""What a loaded model answers, shared by the CLI, evaluate and serve: fill-mask, embeddings, hidden states.

One embedding rule lives here (:func:`embed_batch`: ``auto`` pooling is the mean of the real
tokens for encoders and the last real token for decoders), so ``shoestring embed``,
``shoestring evaluate --task embedding`` and the server's ``/v1/embeddings`` return the same
vectors for the same model.

``model`` is anything :func:`shoestring.models.load_model` accepts (packaged name, folder,
hub id, model artifact). Loaded models are cached per process (a few at most), so a server
calling these per request does not reload weights.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["Pooling", "embed", "embed_batch", "fill_mask", "hidden_states", "pool_hidden", "pooling_for"]

Pooling = Literal["auto", "mean", "cls", "last"]

_MASK_SPELLINGS = ("[MASK]", "<mask>")


@functools.lru_cache(maxsize=4)
def _masked_lm(spec: str) -> tuple[Any, Any]:
    from shoestring.models import load_model, load_tokenizer

    tok = load_tokenizer(spec)
    if tok.mask_token is None:
        raise ShoestringError(f"model '{spec}' has no mask token; fill-mask needs a BERT-style (masked-LM) model")
    from shoestring.models import resolve_model

    if resolve_model(spec).adapter:
        return tok, load_model(spec, "masked-lm").eval()
    loaded: Any = load_model(spec, "masked-lm", output_loading_info=True)
    model, info = loaded
    missing = [k for k in info.get("missing_keys", []) if "embeddings.position_ids" not in k]
    if missing:
        # A sentence encoder (e.g. all-MiniLM) has no trained prediction head: its "top-k"
        # would be random words, so say so instead of printing nonsense with probabilities.
        raise ShoestringError(
            f"model '{spec}' has no trained masked-LM head ({len(missing)} head weights missing); train one with "
            f"`shoestring train --task masked-lm --model {spec} ...` and pass the resulting artifact"
        )
    return tok, model.eval()


@functools.lru_cache(maxsize=4)
def _encoder(spec: str) -> tuple[Any, Any]:
    from shoestring.models import load_model, load_tokenizer, resolve_model

    tok = load_tokenizer(spec)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    ref = resolve_model(spec)
    # A LoRA artifact sits on a causal-LM base: load it as such and read its hidden states.
    model = load_model(spec, "causal-lm" if ref.adapter else "embedding").eval()
    return tok, model


def fill_mask(model: str, text: str, top_k: int = 5) -> list[dict[str, Any]]:
    """Top-``top_k`` fillers for the first mask in ``text``: ``[{token, score, sequence}]``.

    The mask may be written as the model's own mask token, ``[MASK]`` or ``<mask>``.
    ``score`` is the softmax probability (0-1) over the vocabulary at that position.
    """
    import torch

    if top_k < 1:
        raise ShoestringError("top_k must be at least 1")
    tok, mlm = _masked_lm(str(model))
    for spelling in _MASK_SPELLINGS:
        text = text.replace(spelling, tok.mask_token)
    enc = tok(text, return_tensors="pt", truncation=True)
    where = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten()
    if where.numel() == 0:
        raise ShoestringError(f"no mask in the text; write {tok.mask_token} where a word is missing")
    with torch.no_grad():
        logits = mlm(**enc).logits[0, int(where[0])]  # (V,)
    probs = logits.float().softmax(-1)
    scores, ids = probs.topk(min(top_k, probs.numel()))
    out = []
    for score, tid in zip(scores.tolist(), ids.tolist(), strict=True):
        word = tok.decode([tid]).strip()
        out.append({"token": word, "token_id": int(tid), "score": float(score),
                    "sequence": text.replace(tok.mask_token, word, 1)})  # fmt: skip
    return out


def hidden_states(model: str, texts: list[str], layer: int = -1, max_length: int = 512) -> list[np.ndarray]:
    """Per-token hidden states of ``layer`` for each text: arrays of shape (tokens, hidden)."""
    import torch

    tok, enc_model = _encoder(str(model))
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt", truncation=True, max_length=max_length)
            hs = enc_model(**enc, output_hidden_states=True).hidden_states
            _check_layer(layer, len(hs))
            out.append(hs[layer][0].float().numpy())
    return out


class EmbedOptions(TypedDict, total=False):
    """How :func:`embed_batch` turns hidden states into one vector per text (its keyword arguments)."""

    pooling: Pooling
    layer: int
    normalize: bool
    max_length: int


def embed(model: str, texts: list[str], *, batch_size: int = 16, **options: Unpack[EmbedOptions]) -> np.ndarray:
    """Sentence embeddings, shape (len(texts), hidden), by the rule of :func:`embed_batch`
    (``options``: its pooling, layer, normalize, max_length), ``batch_size`` texts per forward."""
    import numpy as np

    if not texts:
        raise ShoestringError("no texts to embed")
    tok, enc_model = _encoder(str(model))
    rows = [embed_batch(enc_model, tok, texts[i : i + batch_size], **options)[0].numpy()
            for i in range(0, len(texts), batch_size)]  # fmt: skip
    return np.concatenate(rows, axis=0)


def embed_batch(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    pooling: Pooling = "auto",
    layer: int = -1,
    normalize: bool = True,
    max_length: int = 512,
    device: str | None = None,
) -> tuple[torch.Tensor, list[int]]:
    """One padded forward of ``texts``: float32 vectors (B, hidden) and each text's token count.

    ``auto`` pooling follows :func:`pooling_for`; ``layer`` indexes the hidden states (-1: the
    last, after the final norm; 0: the embeddings); ``normalize`` L2-normalises each vector.
    """
    import torch

    # Right padding: a decoder's real tokens keep positions 0..n-1, as when the text runs alone.
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                    max_length=max_length)  # fmt: skip
    if device is not None:
        enc = enc.to(device)
    with torch.inference_mode():
        hs = model(**enc, output_hidden_states=True).hidden_states
    _check_layer(layer, len(hs))
    how = pooling_for(model) if pooling == "auto" else pooling
    v = pool_hidden(hs[layer], enc["attention_mask"], how)  # (B, C) float32
    if normalize:
        v = torch.nn.functional.normalize(v, dim=-1)
    return v.cpu(), [int(n) for n in enc["attention_mask"].sum(-1).tolist()]


def pooling_for(model: Any) -> Literal["mean", "last"]:
    """The ``auto`` pooling rule: the last token for decoders (it has attended to every other), mean for encoders."""
    decoder = (
        bool(getattr(model.config, "is_decoder", False))
        or "CausalLM" in type(model).__name__
        or any("CausalLM" in a for a in (getattr(model.config, "architectures", None) or []))
    )
    return "last" if decoder else "mean"


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """One float32 vector per row of ``hidden`` (B, T, C): mean of real tokens, first token, or last real token.

    "last" finds each row's last real token from the mask, so left and right padding agree.
    """
    import torch

    h = hidden.float()  # (B, T, C)
    mask = attention_mask.to(h.device)  # (B, T)
    if how == "mean":
        m = mask.unsqueeze(-1).float()  # (B, T, 1)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "cls":
        return h[:, 0]
    positions = torch.arange(mask.shape[1], device=h.device)
    last = (mask.long() * positions).argmax(-1)  # (B,) index of the last 1
    return h[torch.arange(h.shape[0], device=h.device), last]


def _check_layer(layer: int, n: int) -> None:
    if not -n <= layer < n:
        raise ShoestringError(f"layer {layer} out of range: this model has {n} hidden-state layers (0..{n - 1})")
