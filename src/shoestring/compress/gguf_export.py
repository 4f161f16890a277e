"""GGUF export of Llama-architecture models with the ``gguf`` package's ``GGUFWriter``.

Our own mapping from Hugging Face names to GGUF names (``model.layers.3.mlp.up_proj``
-> ``blk.3.ffn_up``), the architecture metadata llama.cpp reads (``llama.*`` keys), and
the tokenizer (BPE tokens, token types, merges, special-token ids, chat template) so
llama.cpp tokenizes by itself.

One layout difference matters: Hugging Face Llama applies rotary embeddings in the
"rotate half" layout (dimension i pairs with i + d/2 inside a head), while llama.cpp's
``llama`` architecture pairs adjacent dimensions (2i, 2i+1). So the rows of the Q and K
projections are reordered per head: rows [0..d/2) and [d/2..d) are interleaved. V, O and
the MLP are unaffected.

Check: :func:`check_with_llama_cpp` loads the file with llama-cpp-python and compares its
greedy tokens for a fixed prompt with PyTorch's, where the PyTorch reference has its
weights rounded through the same storage type (f16 or Q8_0), so the comparison measures
the export, not the rounding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shoestring.core.errors import ShoestringError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

__all__ = ["GgufType", "check_with_llama_cpp", "gguf_tensor_map", "write_gguf"]

GgufType = Literal["f32", "f16", "q8_0"]
_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_MAP = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_tensor_map(state_names: list[str], n_layers: int) -> dict[str, str]:
    """Hugging Face tensor name -> GGUF tensor name; unknown names are an error."""
    out: dict[str, str] = {}
    for name in state_names:
        if name in _TOP_MAP:
            out[name] = _TOP_MAP[name]
            continue
        parts = name.split(".")
        if len(parts) > 3 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
            rest = ".".join(parts[3:])
            if rest in _LAYER_MAP and int(parts[2]) < n_layers:
                out[name] = f"blk.{parts[2]}.{_LAYER_MAP[rest]}"
                continue
        raise ShoestringError(f"GGUF export: no GGUF name for tensor '{name}'; only plain Llama layouts are supported")
    return out


def _rope_interleave(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder Q/K rows from HF's rotate-half layout to llama.cpp's adjacent-pair layout."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)  # (H*d, C)


def _check_supported(config: Any) -> None:
    if getattr(config, "model_type", None) != "llama":
        raise ShoestringError(
            f"GGUF export supports Llama-architecture models (model_type llama), not '{config.model_type}'; "
            "export hf or onnx instead"
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ShoestringError(
            "GGUF export: Llama models with attention/MLP biases are not supported; export hf or onnx"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ShoestringError(f"GGUF export: rope scaling '{rope.get('rope_type')}' is not supported yet")


def _rope_theta(config: Any) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _storage(name: str, w: np.ndarray, dtype: GgufType) -> tuple[np.ndarray, Any]:
    """(array to write, raw GGML type or None) for one tensor; norms always stay f32."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if w.ndim == 1 or dtype == "f32":
        return w.astype(np.float32), None
    if dtype == "q8_0" and w.shape[-1] % 32 == 0:
        return quants.quantize(w.astype(np.float32), GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return w.astype(np.float16), None


def roundtrip(w: torch.Tensor, dtype: GgufType) -> torch.Tensor:
    """``w`` after storage in ``dtype`` and back (the values llama.cpp will see)."""
    import torch
    from gguf import GGMLQuantizationType, quants

    if w.ndim == 1 or dtype == "f32":
        return w
    if dtype == "q8_0" and w.shape[-1] % 32 == 0:
        q = quants.quantize(w.float().numpy(), GGMLQuantizationType.Q8_0)
        return torch.from_numpy(quants.dequantize(q, GGMLQuantizationType.Q8_0).copy()).reshape(w.shape)
    return w.half().float()


def _tokenizer_metadata(writer: Any, tokenizer: Any) -> dict[str, Any]:
    """BPE vocabulary, merges, token types and special ids from a fast tokenizer."""
    from gguf import TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        raise ShoestringError("GGUF export needs a fast (tokenizers) tokenizer saved with the model")
    tj = json.loads(backend.to_str())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ShoestringError(f"GGUF export supports byte-level BPE tokenizers, not {model.get('type')}")
    vocab: dict[str, int] = dict(model["vocab"])
    types: dict[int, int] = {}
    for added in tj.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        types[added["id"]] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    for tok, i in vocab.items():
        tokens[i] = tok
    token_types = [types.get(i, int(TokenType.NORMAL)) for i in range(size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = _pre_tokenizer_name(tj.get("pre_tokenizer"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    ids = {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "unk": tokenizer.unk_token_id,
        "pad": tokenizer.pad_token_id,
    }
    for key, fn in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
    ):
        if ids[key] is not None:
            fn(int(ids[key]))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and ids["bos"] is not None and probe[0] == ids["bos"])
    writer.add_add_space_prefix(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        writer.add_chat_template(template)
    return {"vocab_size": size, "merges": len(merges), "pre_tokenizer": pre}


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp pre-tokenizer for a tokenizers pre_tokenizer: digits split first = smollm."""
    if not pre:
        return "gpt-2"
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if "Digits" in kinds and any(s.get("type") == "Digits" and s.get("individual_digits") for s in steps):
        return "smollm"  # each digit its own piece, then the GPT-2 regex
    return "gpt-2"


def write_gguf(model: nn.Module, tokenizer: Any, path: Path, dtype: GgufType = "f16", name: str = "") -> dict[str, Any]:
    """Write ``model`` (a float LlamaForCausalLM) and its tokenizer to a GGUF file."""
    import torch
    from gguf import GGUFWriter, LlamaFileType

    config: Any = model.config
    _check_supported(config)
    n_layers = int(config.num_hidden_layers)
    n_head = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output is absent
    names = gguf_tensor_map(list(state), n_layers)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name or str(getattr(config, "_name_or_path", "") or "shoestring-model"))
    writer.add_context_length(int(getattr(config, "max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    # Explicit head size: a pruned model has n_head * head_dim != hidden_size.
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(
        {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype]
    )
    tok_info = _tokenizer_metadata(writer, tokenizer)
    with torch.no_grad():
        for hf_name, tensor in state.items():
            w = tensor.detach().float()
            if hf_name.endswith("q_proj.weight"):
                w = _rope_interleave(w, n_head)
            elif hf_name.endswith("k_proj.weight"):
                w = _rope_interleave(w, n_kv)
            data, raw = _storage(hf_name, w.numpy(), dtype)
            writer.add_tensor(names[hf_name], data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors": len(state), "dtype": dtype, "bytes": path.stat().st_size, **tok_info}


def check_with_llama_cpp(
    model: nn.Module,
    tokenizer: Any,
    path: Path,
    dtype: GgufType,
    prompt: str,
    n_tokens: int = 16,
    threads: int | None = None,
) -> dict[str, Any]:
    """Greedy tokens from llama-cpp-python on ``path`` vs PyTorch on the same token ids."""
    import copy

    import torch

    try:
        from llama_cpp import Llama
    except ImportError:
        raise ShoestringError(
            "checking GGUF needs llama-cpp-python; `pip install llama-cpp-python` or set check: false"
        ) from None
    ids = tokenizer(prompt)["input_ids"]
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(roundtrip(p.detach().float(), dtype))
    ref.eval()
    with torch.inference_mode():
        x = torch.tensor([ids])
        out = ref.generate(  # type: ignore[operator]
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            do_sample=False,
            eos_token_id=None,
        )
        ref_logits = ref(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].float()
    torch_tokens = out[0, len(ids) :].tolist()
    del ref
    llm = Llama(
        model_path=str(path),
        n_ctx=max(64, len(ids) + n_tokens + 8),
        n_threads=threads,
        verbose=False,
        seed=0,
        logits_all=True,
    )
    llm.eval(ids)
    cpp_logits = torch.from_numpy(llm.scores[llm.n_tokens - 1].copy()).float()
    logit_diff = float((cpp_logits - ref_logits).abs().max())
    llm.reset()
    cpp_tokens: list[int] = []
    for tok in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        cpp_tokens.append(int(tok))
        if len(cpp_tokens) >= n_tokens:
            break
    cpp_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    matched = next((i for i, (a, b) in enumerate(zip(torch_tokens, cpp_tokens, strict=False)) if a != b), n_tokens)
    del llm
    return {
        "prompt": prompt,
        "prompt_tokens": len(ids),
        "torch_tokens": torch_tokens,
        "llama_cpp_tokens": cpp_tokens,
        "greedy_identical": torch_tokens == cpp_tokens,
        "max_abs_logit_diff": logit_diff,
        "logit_scale": float(ref_logits.abs().max()),
        "matched_prefix": matched,
        "tokenization_identical": list(cpp_ids) == list(ids),
    }
