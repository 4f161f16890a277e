"""Task endpoints: embeddings (real all-MiniLM-L6-v2), classify and fill-mask (tiny BERTs), recommend."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shoestring.serve import ServeConfig, create_app, load_for_serving
from shoestring.serve.backends import LoadedModel, detect_task
from shoestring.serve.drift import DriftMonitor, Reference, drift_level, load_reference, psi


def _serve(model: str, **cfg: Any) -> TestClient:
    c = ServeConfig(model=model, **cfg)
    return TestClient(create_app(c, load_for_serving(c)))


def test_embeddings_from_the_packaged_encoder_rank_paraphrases_closer() -> None:
    with _serve("all-minilm-l6-v2", max_batch_size=4) as c:
        texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
        r = c.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": texts})
        assert r.status_code == 200, r.text
        body = r.json()
        vecs = [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]
        assert len(vecs) == 3 and len(vecs[0]) == 384
        assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vecs)  # L2-normalised

        def cos(a: list[float], b: list[float]) -> float:
            return sum(x * y for x, y in zip(a, b, strict=True))

        assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]) + 0.2
        assert body["usage"]["prompt_tokens"] > 10
        assert c.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": [""]}).status_code == 400
        chat = {"model": "all-minilm-l6-v2", "messages": [{"role": "user", "content": "hi"}]}
        assert c.post("/v1/chat/completions", json=chat).status_code == 400


@pytest.mark.parametrize("which", ["encoder", "decoder"])
def test_server_embeddings_equal_shoestring_embed(which: str, tiny_llama: Path) -> None:
    """One pooling rule for `shoestring embed` and /v1/embeddings: mean for encoders, last token for decoders."""
    import numpy as np

    from shoestring.models.inference import embed

    model = "all-minilm-l6-v2" if which == "encoder" else str(tiny_llama)
    texts = ["short", "a somewhat longer sentence, so the batch is padded"]
    with _serve(model, task="embedding", model_name="m") as c:
        r = c.post("/v1/embeddings", json={"model": "m", "input": texts})
    assert r.status_code == 200, r.text
    served = np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])])
    assert np.allclose(served, embed(model, texts), atol=1e-5)


def test_classify_and_fill_mask_endpoints(tiny_bert: dict[str, Path]) -> None:
    assert detect_task(str(tiny_bert["classifier"])) == "classification"
    assert detect_task(str(tiny_bert["masked-lm"])) == "masked-lm"
    with _serve(str(tiny_bert["classifier"])) as c:
        r = c.post("/v1/classify", json={"input": ["great film", "awful film"]})
        assert r.status_code == 200, r.text
        for d in r.json()["data"]:
            assert d["label"] in {"neg", "neu", "pos"} and math.isclose(sum(d["scores"].values()), 1.0, rel_tol=1e-4)
            assert d["score"] == max(d["scores"].values())
    with _serve(str(tiny_bert["masked-lm"])) as c:
        r = c.post("/v1/fill-mask", json={"input": "the cat [MASK] on the [MASK].", "top_k": 3})
        assert r.status_code == 200, r.text
        masks = r.json()["data"]
        assert len(masks) == 2 and all(len(m) == 3 for m in masks)
        assert masks[0][0]["score"] >= masks[0][1]["score"]
        assert c.post("/v1/fill-mask", json={"input": "no mask here"}).status_code == 400


class _Popularity:
    """A real (if simple) recommender with the interface train.recsys models expose."""

    def recommend(self, history: list[Any], k: int) -> list[Any]:
        seen = set(history)
        return [i for i in range(100) if i not in seen][:k]


def test_recommend_endpoint_uses_the_recommender_interface() -> None:
    cfg = ServeConfig(model="recsys", task="recommendation")
    app = create_app(cfg, LoadedModel("recommendation", "recsys", recommender=_Popularity()))
    with TestClient(app) as c:
        r = c.post("/v1/recommend", json={"history": [0, 1, 2], "k": 3})
        assert r.status_code == 200
        assert [d["item"] for d in r.json()["data"]] == [3, 4, 5]
        assert c.post("/v1/recommend", json={"history": [], "k": 3}).status_code == 400


def test_psi_thresholds_and_reference_parsing(tmp_path: Path) -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert drift_level(psi([0.5, 0.5], [0.45, 0.55])) == 0
    assert drift_level(0.2) == 1 and drift_level(0.3) == 2
    ref = Reference("x", "numeric", (0.25, 0.5, 0.25), edges=(0, 10, 20, 30))
    assert [ref.bin_of(v) for v in (-5, 5, 15, 25, 99)] == [0, 0, 1, 2, 2]  # outside values fall in end bins
    cat = Reference("label", "categorical", (0.5, 0.5), categories=("a", "b"))
    mon = DriftMonitor({"label": cat}, window=10, min_samples=4)
    for v in "aab":
        mon.observe({"label": v})
    assert "label" not in mon.scores()  # fewer than min_samples: no verdict yet
    mon.observe({"label": "b"})
    assert mon.scores()["label"] == pytest.approx(0.0)
    for v in "cccccc":  # unseen categories are drift too
        mon.observe({"label": v})
    assert mon.scores()["label"] > 0.25
    bad = tmp_path / "reference.json"
    bad.write_text(json.dumps({"features": {"x": {"kind": "numeric", "proportions": [1.0]}}}))
    from shoestring.core.errors import ShoestringError

    with pytest.raises(ShoestringError, match=r"features\.x"):
        load_reference(tmp_path)
    with pytest.raises(ShoestringError, match="not found"):
        load_reference(tmp_path / "nope")


def test_lora_adapter_artifact_is_merged_and_served(tiny_llama: Path, tmp_path: Path) -> None:
    """The quickstart's output is a LoRA adapter artifact: serve it merged, same greedy tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    art = tmp_path / "train-artifact"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(art / "adapter")
    manifest = {"kind": "model", "task": "sft", "base_model": str(tiny_llama)}
    (art / "manifest.json").write_text(json.dumps(manifest))
    assert detect_task(str(art)) == "causal-lm"
    cfg = ServeConfig(model=str(art), model_name="tuned")
    loaded = load_for_serving(cfg)
    assert not hasattr(loaded.model, "peft_config")  # merged into plain weights
    prompt = loaded.tokenizer("The adapter says")["input_ids"]
    with torch.no_grad():
        expected = peft_model.eval().generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, min_new_tokens=6)
    with TestClient(create_app(cfg, loaded)) as c:
        r = c.post("/v1/completions", json={"model": "tuned", "prompt": "The adapter says", "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == loaded.tokenizer.decode(expected[0, len(prompt) :], skip_special_tokens=True)
