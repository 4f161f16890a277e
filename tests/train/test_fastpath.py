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


def _mapped(path: Path) -> bool:
    return any(str(path) in line for line in Path("/proc/self/maps").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads Linux's /proc/self/maps")
def test_casting_frozen_weights_lets_go_of_the_memory_mapped_checkpoint(tiny_llama: Path) -> None:
    """transformers maps the safetensors file into memory; after the cast nothing may still live
    in that mapping, or the replaced fp32 weights' pages stay resident (the cast would cost
    memory instead of saving it)."""
    import gc

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    (ckpt,) = [f.resolve() for f in tiny_llama.glob("*.safetensors")]
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    gc.collect()
    assert _mapped(ckpt)  # the loaded weights live in the file mapping
    ids = torch.tensor([[5, 17, 923, 44, 8, 9]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
    assert hoist_frozen_casts(model, torch.bfloat16) > 0
    gc.collect()
    assert not _mapped(ckpt)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=ids).logits, before)


def test_packed_attention_runs_fp32_blocks_under_cpu_autocast(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Llama's rotary embedding hands the attention an fp32 query under autocast; the blocks
    must still run in fp32 with autocast off (autocast would cast each one to bf16), and the
    output must come back at the autocast precision, close to the masked bf16 path."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    batch = _packed_batch([[[5, 17, 923, 44, 8, 9], [301, 7, 7, 12]], [[99, 1000, 4, 5, 6]]], 16)
    kw = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        masked = model(**kw).logits
        use_packed_attention(model)
        seen: list[tuple[torch.dtype, bool]] = []
        real = F.scaled_dot_product_attention

        def spy(q: torch.Tensor, *a: object, **k: object) -> torch.Tensor:
            seen.append((q.dtype, torch.is_autocast_enabled("cpu")))
            return real(q, *a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
        mine = model(**kw).logits
    assert seen and set(seen) == {(torch.float32, False)}
    torch.testing.assert_close(mine.float(), masked.float(), atol=0.05, rtol=0.05)
