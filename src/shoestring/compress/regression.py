"""The regression report: a compressed model measured against its parent, side by side.

What is measured (same inputs for both models, same process, same thread count):

* size - bytes of the weights in memory (shared tensors counted once) and, for the child,
  bytes of its weight files on disk;
* latency - median seconds of one forward pass over ``latency_tokens`` tokens (batch 1),
  after warm-up, parent and child runs interleaved so machine noise hits both alike;
* tokens/s (causal LMs) - greedy generation of ``gen_tokens`` new tokens, median of runs;
* quality - perplexity on held-out text (causal LMs), cosine similarity of sentence
  embeddings to the parent's (encoders), label agreement (classifiers);
* KL divergence KL(parent || child) of the output distributions, nats per token.

A speedup below 1.0 is reported as a slowdown, never hidden: int8 can be slower than
float32 on CPUs without fast int8 dot products, or at batch 1 where packing costs dominate.
"""

from __future__ import annotations

import html
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from shoestring.core.errors import ShoestringError
from shoestring.core.jsonl import iter_jsonl

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "COMPARISON_KEYS",
    "GateConfig",
    "builtin_texts",
    "check_gate",
    "encode_blocks",
    "measure_pair",
    "render_html",
    "weight_bytes",
]


class GateConfig(BaseModel):
    """Pass/fail thresholds for a compressed model versus its parent (null = not checked)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_ppl_increase_pct: float | None = 5.0
    """Largest allowed perplexity increase over the parent, in percent (causal LMs)."""
    max_kl: float | None = 0.05
    """Largest allowed mean KL(parent || child) of next-token distributions, nats/token."""
    min_speedup: float | None = None
    """Smallest allowed parent_latency / child_latency (1.0 = no slower than the parent)."""
    min_tokens_per_s_ratio: float | None = None
    """Smallest allowed child / parent greedy-generation tokens/s (causal LMs; 1.0 = no slower)."""
    min_cosine: float | None = None
    """Smallest allowed mean cosine similarity of embeddings to the parent's (encoders)."""
    max_size_ratio: float | None = None
    """Largest allowed child_weight_bytes / parent_weight_bytes."""
    min_agreement: float | None = None
    """Smallest allowed fraction of inputs where child and parent predict the same label."""


def builtin_texts(split: Literal["heldout", "train"]) -> list[str]:
    """Documented built-in English text: Python's own reference docs (``pydoc_data.topics``).

    Topics are sorted by name; every 5th topic is held out for measurement, the rest may
    be used for distillation or recovery fine-tuning, so the two never overlap.
    """
    import pydoc_data.topics as topics

    names = sorted(topics.topics)
    keep = [n for i, n in enumerate(names) if (i % 5 == 0) == (split == "heldout")]
    return [topics.topics[n] for n in keep]


def dataset_texts(path: Path, limit: int = 2000) -> list[str]:
    """``text`` fields of a dataset JSONL split (the dataset artifact contract)."""
    out: list[str] = []
    for rec in iter_jsonl(path):
        text = rec.get("text")
        if isinstance(text, str) and text.strip():
            out.append(text)
        if len(out) >= limit:
            break
    if not out:
        raise ShoestringError(f"{path} has no records with a non-empty 'text' field; pass another dataset")
    return out


def encode_blocks(tokenizer: Any, texts: Sequence[str], block_len: int, n_blocks: int) -> torch.Tensor:
    """Concatenate texts (EOS-separated) and cut ``n_blocks`` blocks of ``block_len`` tokens.

    Returns a LongTensor (n, block_len); fewer blocks when the text runs out, none is an error.
    """
    import torch

    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids: list[int] = []
    need = block_len * n_blocks
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(int(sep))
        if len(ids) >= need:
            break
    n = min(n_blocks, len(ids) // block_len)
    if n == 0:
        raise ShoestringError(
            f"held-out text has only {len(ids)} tokens, fewer than one block of {block_len}; "
            "pass a dataset with more text or lower eval_seq_len"
        )
    return torch.tensor(ids[: n * block_len], dtype=torch.long).reshape(n, block_len)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of parameters and persistent buffers, shared storage counted once."""
    seen: set[int] = set()
    total = 0
    tensors = list(model.state_dict(keep_vars=True).values())
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen or t.device.type == "meta":
            continue
        seen.add(ptr)
        total += t.untyped_storage().nbytes()
    return total


def folder_bytes(folder: Path) -> int:
    """Bytes of weight files (``*.safetensors``, ``*.bin``, ``*.gguf``, ``*.onnx*``) in a folder."""
    pats = ("*.safetensors", "*.bin", "*.gguf", "*.onnx", "*.onnx.data")
    return sum(f.stat().st_size for p in pats for f in Path(folder).rglob(p) if f.is_file())


def _outputs(model: nn.Module, ids: torch.Tensor, task: str) -> torch.Tensor:
    """Logits (LMs, classifiers) or mean-pooled embeddings (encoders), float32."""
    import torch

    mask = torch.ones_like(ids)
    out = model(input_ids=ids, attention_mask=mask)
    if task == "embedding":
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden.float().mean(dim=1)  # (B, H)
    return out.logits.float()


def _compare_outputs(
    parent: nn.Module, child: nn.Module, blocks: torch.Tensor, task: str, batch_size: int
) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    kl_sum = 0.0
    kl_n = 0
    nll_p = nll_c = 0.0
    n_tok = 0
    cos: list[float] = []
    agree = total = 0
    with torch.inference_mode():
        for i in range(0, blocks.shape[0], batch_size):
            ids = blocks[i : i + batch_size]
            po, co = _outputs(parent, ids, task), _outputs(child, ids, task)
            if task == "embedding":
                cos.extend(F.cosine_similarity(po, co, dim=-1).tolist())
                continue
            lp, lc = F.log_softmax(po, dim=-1), F.log_softmax(co, dim=-1)
            kl = (lp.exp() * (lp - lc)).sum(-1)  # (B, T) or (B,) nats
            kl_sum += float(kl.sum())
            kl_n += kl.numel()
            if task == "causal-lm":
                tgt = ids[:, 1:]
                nll_p += float(F.nll_loss(lp[:, :-1].flatten(0, 1), tgt.flatten(), reduction="sum"))
                nll_c += float(F.nll_loss(lc[:, :-1].flatten(0, 1), tgt.flatten(), reduction="sum"))
                n_tok += tgt.numel()
            else:
                agree += int((po.argmax(-1) == co.argmax(-1)).sum())
                total += po.argmax(-1).numel()
    out: dict[str, Any] = {"eval_blocks": int(blocks.shape[0]), "eval_block_tokens": int(blocks.shape[1])}
    if task == "embedding":
        out["cosine_to_parent"] = statistics.fmean(cos)
        out["min_cosine_to_parent"] = min(cos)
        return out
    out["kl_mean"] = kl_sum / max(kl_n, 1)
    if task == "causal-lm":
        import math

        out["parent_ppl"] = math.exp(nll_p / n_tok)
        out["child_ppl"] = math.exp(nll_c / n_tok)
        out["ppl_increase_pct"] = 100.0 * (out["child_ppl"] / out["parent_ppl"] - 1.0)
        out["eval_tokens"] = n_tok
    else:
        out["agreement"] = agree / max(total, 1)
    return out


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved(fa: Callable[[], Any], fb: Callable[[], Any], runs: int, warmup: int) -> tuple[float, float]:
    """Median seconds of ``fa`` and ``fb``, run alternately (A B A B ...) after warm-up."""
    for _ in range(warmup):
        fa()
        fb()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(runs):
        # Alternate who goes first so neither always runs on a warmer cache.
        if i % 2 == 0:
            ta.append(_timed(fa))
            tb.append(_timed(fb))
        else:
            tb.append(_timed(fb))
            ta.append(_timed(fa))
    return statistics.median(ta), statistics.median(tb)


def _greedy(model: nn.Module, prompt: torch.Tensor, n_new: int, eos_free: bool = True) -> torch.Tensor:
    """Greedy generation of exactly ``n_new`` tokens (EOS does not stop it, for fair timing)."""
    import torch

    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": n_new,
        "min_new_tokens": n_new,
        "do_sample": False,
        "attention_mask": torch.ones_like(prompt),
    }
    if eos_free:
        gen_kwargs["eos_token_id"] = None
    with torch.inference_mode():
        return model.generate(prompt, **gen_kwargs)  # type: ignore[operator]


def measure_pair(
    parent: nn.Module,
    child: nn.Module,
    blocks: torch.Tensor,
    *,
    task: str,
    batch_size: int = 4,
    latency_tokens: int = 128,
    latency_runs: int = 10,
    gen_tokens: int = 32,
    gen_runs: int = 3,
) -> dict[str, Any]:
    """Quality, KL and speed of ``child`` versus ``parent`` on the same held-out blocks."""
    import torch

    parent.eval()
    child.eval()
    report: dict[str, Any] = {"task": task, "threads": torch.get_num_threads()}
    report.update(_compare_outputs(parent, child, blocks, task, batch_size))

    x = blocks[:1, : min(latency_tokens, blocks.shape[1])]
    with torch.inference_mode():
        tp, tc = _interleaved(
            lambda: _outputs(parent, x, task), lambda: _outputs(child, x, task), latency_runs, warmup=2
        )
    report.update(
        latency_tokens=int(x.shape[1]),
        latency_runs=latency_runs,
        parent_latency_s=tp,
        child_latency_s=tc,
        speedup=tp / tc if tc > 0 else None,
    )
    if task == "causal-lm" and gen_tokens > 0 and hasattr(child, "generate"):
        prompt = blocks[:1, : min(32, blocks.shape[1])]
        gp, gc = _interleaved(
            lambda: _greedy(parent, prompt, gen_tokens), lambda: _greedy(child, prompt, gen_tokens), gen_runs, 1
        )
        same = bool(torch.equal(_greedy(parent, prompt, gen_tokens), _greedy(child, prompt, gen_tokens)))
        report.update(
            gen_tokens=gen_tokens,
            parent_tokens_per_s=gen_tokens / gp,
            child_tokens_per_s=gen_tokens / gc,
            greedy_tokens_identical=same,
            tokens_per_s_ratio=gp / gc if gc > 0 else None,
        )
    pw, cw = weight_bytes(parent), weight_bytes(child)
    report.update(parent_weight_bytes=pw, child_weight_bytes=cw, size_ratio=cw / pw)
    return report


def check_gate(report: dict[str, Any], gate: GateConfig) -> list[str]:
    """Human-readable failures (empty = pass). A metric the task does not have is skipped."""
    fails: list[str] = []

    def above(key: str, limit: float | None, label: str, unit: str = "") -> None:
        v = report.get(key)
        if limit is not None and v is not None and v > limit:
            fails.append(f"{label} {v:.4g}{unit} > {limit:g}{unit}")

    def below(key: str, limit: float | None, label: str) -> None:
        v = report.get(key)
        if limit is not None and v is not None and v < limit:
            fails.append(f"{label} {v:.4g} < {limit:g}")

    above("ppl_increase_pct", gate.max_ppl_increase_pct, "perplexity increase", "%")
    above("kl_mean", gate.max_kl, "KL divergence (nats/token)")
    above("size_ratio", gate.max_size_ratio, "size ratio")
    below("speedup", gate.min_speedup, "speedup")
    below("tokens_per_s_ratio", gate.min_tokens_per_s_ratio, "generation tokens/s ratio")
    below("cosine_to_parent", gate.min_cosine, "cosine to parent")
    below("agreement", gate.min_agreement, "label agreement")
    return fails


COMPARISON_KEYS = (
    "kl_mean",
    "ppl_increase_pct",
    "cosine_to_parent",
    "agreement",
    "speedup",
    "tokens_per_s_ratio",
    "size_ratio",
    "child_file_bytes",
)
"""The report's figures of the compressed model against its parent (the stage's stats and the
page's details both list them)."""

_ROWS = [
    ("weights in memory (MB)", "parent_weight_bytes", "child_weight_bytes", 1e-6),
    ("forward latency (ms)", "parent_latency_s", "child_latency_s", 1e3),
    ("generation (tokens/s)", "parent_tokens_per_s", "child_tokens_per_s", 1.0),
    ("perplexity", "parent_ppl", "child_ppl", 1.0),
]


def render_html(report: dict[str, Any], title: str) -> str:
    """A self-contained HTML page (no scripts, no external assets) for the report."""
    esc = html.escape
    rows = []
    for label, pk, ck, mult in _ROWS:
        if report.get(pk) is None or report.get(ck) is None:
            continue
        rows.append(f"<tr><td>{esc(label)}</td><td>{report[pk] * mult:.4g}</td><td>{report[ck] * mult:.4g}</td></tr>")
    extra = []
    for key in (
        *COMPARISON_KEYS,
        "greedy_tokens_identical",
        "threads",
        "backend",
        "eval_blocks",
        "eval_block_tokens",
        "latency_tokens",
    ):
        if key in report:
            v = report[key]
            extra.append(f"<tr><td>{esc(key)}</td><td>{esc(f'{v:.5g}' if isinstance(v, float) else str(v))}</td></tr>")
    gate = report.get("gate", {})
    verdict = "PASS" if gate.get("passed", True) else "FAIL"
    colour = "#1a7f37" if verdict == "PASS" else "#cf222e"
    fails = "".join(f"<li>{esc(f)}</li>" for f in gate.get("failures", []))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}}td,th{{padding:.25em .8em;border-bottom:1px solid #ddd}}
.v{{color:{colour};font-weight:bold}}</style></head><body>
<h1>{esc(title)}</h1><p>Gate: <span class="v">{verdict}</span> ({esc(gate.get("action", "fail"))})</p><ul>{fails}</ul>
<h2>Parent vs compressed</h2><table><tr><th>metric</th><th>parent</th><th>compressed</th></tr>{"".join(rows)}</table>
<h2>Details</h2><table>{"".join(extra)}</table>
<p>Latency: median of {report.get("latency_runs", "?")} interleaved runs after warm-up; a speedup below 1 means the
compressed model is slower on this machine.</p></body></html>
"""
