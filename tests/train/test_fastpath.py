"""The CPU fast paths give the same results as the code they replace."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shoestring.train import data as D
from shoestring.train.fastpath import (
    PACKED_ATTENTION,
    FastDropout,
    fast_lora_dropout,
    hoist_frozen_casts,
    restore_attention,
    use_packed_attention,
)


def _packed_batch(rows_of_docs: list[list[list[int]]], width: int) -> dict[str, torch.Tensor]:
    rows = []
    for docs in rows_of_docs:
        row = D.Row([], [], [])
        for d in docs:
            row.input_ids.extend(d)
            row.labels.extend(d)
            row.position_ids.extend(range(len(d)))
        rows.append(row)
    batch = D.collate(rows, pad_id=0, packed=True)
    assert batch["input_ids"].shape[1] <= width
    return batch


def test_packed_attention_matches_the_block_mask_and_each_document_alone(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers.integrations.sdpa_attention as sdpa
    from transformers import AutoModelForCausalLM

    fallbacks: list[int] = []
    real = sdpa.sdpa_attention_forward
    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **k: fallbacks.append(1) or real(*a, **k))

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    docs = [[[5, 17, 923, 44, 8], [301, 7, 7, 12], [99, 1000, 4]], [[11, 12, 13, 14, 15, 16, 17], [3]]]
    batch = _packed_batch(docs, 16)  # row 2 is shorter: collate pads it with a pseudo-document
    kw = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad():
        masked = model(**kw).logits  # transformers' block-diagonal mask
        prev = use_packed_attention(model)
        assert prev == "sdpa" and model.config._attn_implementation == PACKED_ATTENTION
        mine = model(**kw).logits
        assert not fallbacks  # every layer ran the per-document path
        for r, row_docs in enumerate(docs):
            offset = 0
            for d in row_docs:
                alone = model(input_ids=torch.tensor([d]), use_cache=False).logits[0]
                torch.testing.assert_close(mine[r, offset : offset + len(d)], alone, atol=1e-5, rtol=1e-4)
                offset += len(d)
        restore_attention(model, prev)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(mine, masked, atol=1e-5, rtol=1e-4)


def test_packed_attention_gradients_match_the_masked_path(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    batch = _packed_batch([[[5, 17, 923, 44, 8, 9], [301, 7, 7, 12]], [[99, 1000, 4, 5, 6]]], 16)

    def grads(packed: bool) -> dict[str, torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        model.train()
        if packed:
            use_packed_attention(model)
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        out.logits.float().pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, mine = grads(False), grads(True)
    assert ref.keys() == mine.keys()
    for name in ref:
        torch.testing.assert_close(mine[name], ref[name], atol=1e-5, rtol=1e-3, msg=name)


def test_fast_dropout_keeps_the_right_share_is_reproducible_and_scales() -> None:
    drop = FastDropout(0.05)
    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    # 1e6 Bernoulli(0.95) draws: sd 2.2e-4, so 5e-4 is > 2 sd and far below any real bias.
    assert abs(kept.float().mean().item() - 0.95) < 5e-4
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.95))
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # the torch seed fixes the mask
    assert not torch.equal(drop(x), y)  # and the next call draws a new one
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.95)  # gradient flows only through kept elements
    drop.eval()
    assert drop(x) is x


def test_fast_dropout_rejects_p_of_one() -> None:
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


def test_lora_helpers_swap_dropout_and_cast_only_frozen_adapted_weights(tiny_llama: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    lm_head_dtype = model.get_output_embeddings().weight.dtype
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    n_lora = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    assert fast_lora_dropout(model) == n_lora > 0
    batch = _packed_batch([[[5, 17, 923, 44, 8, 9], [301, 7, 7, 12]]], 16)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    saved = hoist_frozen_casts(model, torch.bfloat16)
    assert saved > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    assert torch.equal(before, after)  # autocast cast these weights anyway: bit-identical
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.dtype == torch.float32, name  # adapters stay fp32
    assert model.get_output_embeddings().weight.dtype == lm_head_dtype
