from __future__ import annotations

from pathlib import Path

import pytest

from shoestring.core.errors import ShoestringError
from shoestring.models import count_parameters, load_config, load_model, load_tokenizer, resolve_model


def test_packaged_names_resolve_to_installed_files() -> None:
    ref = resolve_model("smollm2-135m-instruct")
    assert ref.kind == "packaged" and ref.location.endswith(".gguf") and Path(ref.location).is_file()
    enc = resolve_model("all-minilm-l6-v2")
    assert (Path(enc.location) / "model.safetensors").is_file()


def test_unknown_and_missing_models_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ShoestringError, match="model folder not found"):
        resolve_model(str(tmp_path / "nothing"))
    with pytest.raises(ShoestringError, match="unknown model"):
        resolve_model("not a model!")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShoestringError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty"))


def test_hub_id_offline_gives_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    ref = resolve_model("acme-nonexistent/tiny-model")
    assert ref.kind == "hub"
    with pytest.raises(ShoestringError) as ei:
        load_config(ref)
    assert "HF_HUB_OFFLINE=1" in str(ei.value) and "\n" not in str(ei.value)


def test_encoder_loads_and_counts_parameters() -> None:
    cfg = load_config("all-minilm-l6-v2")
    assert cfg.model_type == "bert" and cfg.num_hidden_layers == 6
    n = count_parameters(cfg, "embedding")
    model = load_model("all-minilm-l6-v2", "embedding")
    assert n == sum(p.numel() for p in model.parameters()) == 22_713_216
    tok = load_tokenizer("all-minilm-l6-v2")
    assert tok("the cat sat")["input_ids"][0] == tok.cls_token_id


def test_gguf_config_reads_metadata() -> None:
    cfg = load_config("smollm2-135m-instruct")
    assert cfg.model_type == "llama"
    assert cfg.num_hidden_layers == 30 and cfg.hidden_size == 576
    assert count_parameters(cfg, "causal-lm") > 100_000_000


@pytest.mark.slow
def test_gguf_model_generates_greedy_text() -> None:
    import torch

    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_model("smollm2-135m-instruct", "causal-lm")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text


class _Saves:
    """A tokenizer or model whose save_pretrained writes one file, or fails like a full disk."""

    def __init__(self, name: str, fail: bool) -> None:
        self.name, self.fail, self.config = name, fail, object()

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / self.name).write_text("{}")
        if self.fail:
            raise OSError(28, "No space left on device")


@pytest.fixture
def fake_gguf_loaders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, bool]:
    """GGUF loading without a model: the conversion's writes are what these tests are about."""
    import transformers

    fail = {"model": False}
    monkeypatch.setenv("SHOESTRING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _Saves("tokenizer.json", False))
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _Saves("config.json", fail["model"])
    )
    return fail


def test_a_gguf_conversion_that_fails_to_write_leaves_no_folder(tmp_path: Path, fake_gguf_loaders: dict) -> None:
    import subprocess
    import sys

    from shoestring.models.loading import _materialize_gguf

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is now surely no one's
    models = tmp_path / "cache" / "models"
    killed = models / f".other-0123456789ab.tmp-{proc.pid}"  # a conversion killed mid-write
    killed.mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"half")
    fake_gguf_loaders["model"] = True
    with pytest.raises(OSError) as err:
        _materialize_gguf(gguf, "m")
    assert err.value.filename is not None and Path(err.value.filename).parent == models
    assert list(models.iterdir()) == []
    fake_gguf_loaders["model"] = False  # space freed: the rerun converts
    out = _materialize_gguf(gguf, "m")
    assert sorted(p.name for p in out.iterdir()) == [".complete", "config.json", "tokenizer.json"]
    assert list(models.iterdir()) == [out]
