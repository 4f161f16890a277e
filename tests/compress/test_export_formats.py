"""GGUF and ONNX writers: layout maths, metadata, and the llama.cpp / onnxruntime checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoestring.compress.gguf_export import _rope_interleave, check_with_llama_cpp, gguf_tensor_map, write_gguf
from shoestring.compress.onnx_export import check_with_onnxruntime, write_onnx
from shoestring.core.errors import ShoestringError


def _rope_rotate_half(x: torch.Tensor, pos: int, theta: float = 10000.0) -> torch.Tensor:
    """HF Llama rotary embedding on one head vector (pairs i and i + d/2)."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.cat([pos * inv, pos * inv])
    rot = torch.cat([-x[d // 2 :], x[: d // 2]])
    return x * ang.cos() + rot * ang.sin()


def _rope_adjacent(x: torch.Tensor, pos: int, theta: float = 10000.0) -> torch.Tensor:
    """llama.cpp's 'norm' rotary embedding (pairs 2i and 2i + 1)."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    a, b = x[0::2], x[1::2]
    c, s = (pos * inv).cos(), (pos * inv).sin()
    out = torch.empty_like(x)
    out[0::2], out[1::2] = a * c - b * s, a * s + b * c
    return out


def test_qk_row_permutation_turns_rotate_half_into_adjacent_pairs() -> None:
    torch.manual_seed(0)
    heads, d, hidden = 3, 8, 5
    w = torch.randn(heads * d, hidden, dtype=torch.float64)
    h = torch.randn(hidden, dtype=torch.float64)
    q_hf, q_gguf = (w @ h).reshape(heads, d), (_rope_interleave(w, heads) @ h).reshape(heads, d)
    for pos in (0, 3, 17):
        for i in range(heads):
            a = _rope_rotate_half(q_hf[i], pos)
            b = _rope_adjacent(q_gguf[i], pos)
            # same rotated vector, just stored in the other layout: dot products agree
            assert torch.allclose(a @ a, b @ b)
            k = torch.randn(d, dtype=torch.float64)
            k_g = k.reshape(2, d // 2).t().reshape(d)  # the same permutation applied to a key
            assert torch.allclose(a @ _rope_rotate_half(k, pos + 2), b @ _rope_adjacent(k_g, pos + 2))


def test_tensor_map_rejects_unknown_names() -> None:
    m = gguf_tensor_map(["model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight"], 2)
    assert m == {
        "model.layers.1.mlp.up_proj.weight": "blk.1.ffn_up.weight",
        "model.embed_tokens.weight": "token_embd.weight",
    }
    with pytest.raises(ShoestringError, match="no GGUF name"):
        gguf_tensor_map(["model.layers.0.self_attn.rotary.weight"], 2)


@pytest.fixture(scope="module")
def llama_and_tok(tiny_llama: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def test_gguf_f32_matches_pytorch_in_llama_cpp(llama_and_tok, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gguf import GGUFReader

    model, tok = llama_and_tok
    path = tmp_path / "m.gguf"
    info = write_gguf(model, tok, path, "f32")
    assert info["tensors"] == 2 + 3 * 9  # embeddings + final norm + 9 per block; tied output omitted
    r = GGUFReader(str(path))
    assert r.fields["llama.attention.head_count_kv"].contents() == 2
    assert r.fields["llama.attention.key_length"].contents() == 16
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == len(tok)
    chk = check_with_llama_cpp(model, tok, path, "f32", "Compression keeps 12 of the 30 layers and", 8)
    assert chk["greedy_identical"], chk
    assert chk["tokenization_identical"]
    assert chk["max_abs_logit_diff"] < 1e-3 * max(1.0, chk["logit_scale"])


def test_gguf_refuses_encoders(tiny_bert, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModel, AutoTokenizer

    with pytest.raises(ShoestringError, match="Llama-architecture"):
        write_gguf(AutoModel.from_pretrained(tiny_bert), AutoTokenizer.from_pretrained(tiny_bert), tmp_path / "x.gguf")


def test_onnx_encoder_matches_pytorch(tiny_bert, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_bert).eval()
    info = write_onnx(model, tmp_path / "m.onnx", "embedding")
    assert info["output"] == "last_hidden_state"
    chk = check_with_onnxruntime(model, tmp_path / "m.onnx", "embedding", model.config.vocab_size)
    assert chk["check_shape"] == [2, 23]  # a different shape from the trace: dynamic axes work
    assert chk["max_abs_diff"] < 1e-4
