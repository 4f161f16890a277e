"""`--engine auto` on a compressed (int8) model: it measures every CPU engine, says what it chose and why,
caches the measurement, and the chosen engine generates what the dequantised model generates."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def int8_folder(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as `shoestring compress --method int8-weight` writes it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shoestring.compress import quantize_model
    from shoestring.compress.modelio import save_model_folder

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    spec = quantize_model(model, "int8-weight")
    out = tmp_path_factory.mktemp("tiny-int8")
    save_model_folder(model, AutoTokenizer.from_pretrained(tiny_llama), out, "causal-lm", spec)
    return out


def test_auto_measures_both_engines_logs_its_choice_and_caches_it(
    int8_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shoestring.serve.config import ServeConfig
    from shoestring.serve.engine_select import build_engine

    monkeypatch.setenv("SHOESTRING_CACHE", str(tmp_path))
    cfg = ServeConfig(model=str(int8_folder), engine="auto", threads=1, max_batch_size=2)
    first = build_engine(cfg, 256)
    try:
        assert first.reason.startswith("auto: ") and "fastest" in first.reason
        assert "torch" in first.reason and "llama.cpp" in first.reason  # both were measured
        assert first.engine.info.name in first.reason.split(": ")[-1]
    finally:
        getattr(first.engine, "close", lambda: None)()
    assert (tmp_path / "engine-choice.json").is_file()
    again = build_engine(cfg, 256)
    try:
        assert "measured earlier" in again.reason and again.engine.info.name == first.engine.info.name
    finally:
        getattr(again.engine, "close", lambda: None)()


def test_torch_engine_serves_the_int8_model_natively_with_its_grid_values(int8_folder: Path) -> None:
    import torch

    from shoestring.compress import dequantize_model
    from shoestring.models import load_model
    from shoestring.serve.config import ServeConfig
    from shoestring.serve.engine import Sampling, Work
    from shoestring.serve.engine_select import build_engine

    choice = build_engine(ServeConfig(model=str(int8_folder), engine="torch", dtype="float32", threads=1), 256)
    details = choice.engine.info.details
    assert details["kernel"].startswith("native") and details["dequantized_from"] == "int8-weight"
    reference = copy.deepcopy(load_model(str(int8_folder)))
    assert dequantize_model(reference) > 0
    prompt = [1, 42, 7, 300, 12, 99]
    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    engine = choice.engine
    slot, _ = engine.admit(prompt, Sampling())
    got = [engine.step([Work(slot, prompt, 0, True)])[slot]]
    for k in range(7):
        got.append(engine.step([Work(slot, [got[-1]], len(prompt) + k, True)])[slot])
    assert got == expected[0, len(prompt) :].tolist()


def test_a_failed_f16_export_leaves_no_temporary_and_a_killed_ones_is_swept(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The llama.cpp engine's f16 GGUF of a folder model lives in the user's cache, outside any
    workspace: a half file there would hold a model's size of disk until removed by hand."""
    import errno
    import subprocess
    import sys

    from shoestring.compress import gguf_export
    from shoestring.serve.engine_select import gguf_for

    monkeypatch.setenv("SHOESTRING_CACHE", str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is now surely no one's
    killed = tmp_path / "gguf" / f".old-0123456789ab-f16.gguf.tmp-{proc.pid}"
    killed.parent.mkdir()
    killed.write_bytes(b"GGUF half")

    def disk_fills(model: object, tokenizer: object, path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"GGUF half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_export, "write_gguf", disk_fills)
    with pytest.raises(OSError) as err:
        gguf_for(str(tiny_llama))
    assert err.value.filename is not None and err.value.filename.endswith("-f16.gguf")  # what to free space for
    assert list((tmp_path / "gguf").iterdir()) == []


def test_the_engine_is_built_in_a_thread_that_is_gone_afterwards(int8_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler thread must be the only one left holding an OpenMP pool (serve.native's docstring):
    build_engine loads in a thread of its own that has exited when it returns, and errors still reach
    the caller."""
    import threading

    from shoestring.core.errors import ShoestringError
    from shoestring.serve import engine_select
    from shoestring.serve.config import ServeConfig

    seen: list[threading.Thread] = []
    real = engine_select._build

    def spy(*a, **kw):  # type: ignore[no-untyped-def]
        seen.append(threading.current_thread())
        return real(*a, **kw)

    monkeypatch.setattr(engine_select, "_build", spy)
    choice = engine_select.build_engine(ServeConfig(model=str(int8_folder), engine="torch", threads=1), 256)
    assert choice.engine.info.name == "torch"
    assert len(seen) == 1 and seen[0] is not threading.current_thread() and not seen[0].is_alive()
    with pytest.raises(ShoestringError):  # raised in the loading thread, re-raised here
        engine_select.build_engine(ServeConfig(model=str(int8_folder / "missing"), engine="torch", threads=1), 256)
