"""DP-SGD through Opacus: both modes, accountant figures, compatibility errors, BERT."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_helpers import make_ctx
from torch.utils.data import DataLoader, TensorDataset

from shoestring.core.config import parse_config
from shoestring.core.errors import ShoestringError
from shoestring.train.config import TrainConfig
from shoestring.train.privacy import (
    PrivacyOptions,
    check_dp_compatible,
    make_private,
    privacy_report,
    with_per_example_positions,
)
from shoestring.train.tabular import train_tabular

pytestmark = pytest.mark.usefixtures("one_thread")


def dp_digits(privacy: dict[str, Any], epochs: int = 4) -> TrainConfig:
    return TrainConfig.model_validate({
        "task": "tabular-classification", "tabular": {"source": "digits", "hidden_sizes": [64]}, "epochs": epochs,
        "micro_batch_size": 128, "lr": 0.01, "dropout": 0.0, "early_stopping_patience": 100, "privacy": privacy,
    })


def test_options_need_exactly_one_mode() -> None:
    with pytest.raises(ShoestringError, match="exactly one of target_epsilon"):
        parse_config(PrivacyOptions, {}, "privacy")
    with pytest.raises(ShoestringError, match="exactly one of target_epsilon"):
        parse_config(PrivacyOptions, {"target_epsilon": 1.0, "noise_multiplier": 1.0}, "privacy")
    with pytest.raises(ShoestringError, match="delta"):
        parse_config(PrivacyOptions, {"target_epsilon": 1.0, "delta": 2.0}, "privacy")
    assert PrivacyOptions(noise_multiplier=1.0).mode == "fixed-noise"


def test_target_epsilon_mode_spends_the_budget_on_digits(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    stats = train_tabular(dp_digits({"target_epsilon": 2.0, "accountant": "rdp"}), ctx)
    p = stats["privacy"]
    assert ctx.extra_manifest["privacy"] == p
    assert p["mode"] == "target-epsilon" and p["accountant"] == "rdp"
    # Opacus picks the noise so the planned epochs land on (just under) the target.
    assert 1.6 < p["epsilon_spent"] <= 2.0 + 1e-6
    assert p["delta"] == pytest.approx(1 / (10 * 1257)) and p["noise_multiplier"] > 0.5
    assert p["steps"] > 0 and p["sample_rate"] == pytest.approx(1 / 10)
    assert stats["test"]["accuracy"] > 0.6  # noisy, but far above the 10% of chance


def test_fixed_noise_mode_reports_what_an_independent_accountant_computes(tmp_path: Path) -> None:
    from opacus.accountants import PRVAccountant, RDPAccountant

    ctx = make_ctx(tmp_path)
    stats = train_tabular(dp_digits({"noise_multiplier": 1.5, "delta": 1e-5}, epochs=2), ctx)
    p = stats["privacy"]
    assert p["mode"] == "fixed-noise" and p["noise_multiplier"] == 1.5 and p["accountant"] == "prv"
    prv, rdp = PRVAccountant(), RDPAccountant()
    for _ in range(p["steps"]):
        prv.step(noise_multiplier=1.5, sample_rate=p["sample_rate"])
        rdp.step(noise_multiplier=1.5, sample_rate=p["sample_rate"])
    assert p["epsilon_spent"] == pytest.approx(prv.get_epsilon(delta=1e-5), rel=1e-3)
    assert p["epsilon_spent"] < rdp.get_epsilon(delta=1e-5)  # PRV is the tighter bound


def test_incompatible_layers_are_a_one_line_error() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    with pytest.raises(ShoestringError, match=r"not compatible with DP-SGD.*BatchNorm") as err:
        check_dp_compatible(model)
    assert "\n" not in str(err.value)
    fixed = check_dp_compatible(model, fix=True)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in fixed.modules())


def _tiny_bert_classifier() -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(cfg)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_dp_sgd_trains_a_small_transformer_classifier(method: str) -> None:
    model = _tiny_bert_classifier()
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    x = torch.randint(1, 60, (64, 10))
    y = (x[:, 0] >= 30).long()  # the label is readable from the first token
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    # Full fine-tune in target-epsilon mode, LoRA in fixed-noise mode: both paths through Opacus.
    opts = (PrivacyOptions(target_epsilon=8.0, max_grad_norm=0.5, accountant="rdp") if method == "full"
            else PrivacyOptions(noise_multiplier=0.8, max_grad_norm=0.5, accountant="rdp"))
    session = make_private(model, opt, loader, opts, epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            for xb, yb in session.data_loader:
                if len(xb) == 0:
                    continue
                session.optimizer.zero_grad()
                out = session.model(**with_per_example_positions({"input_ids": xb}))
                torch.nn.functional.cross_entropy(out.logits, yb).backward()
                session.optimizer.step()
    report = privacy_report(session)
    assert report["steps"] > 0 and 0 < report["epsilon_spent"] < math.inf
    if method == "full":
        assert report["epsilon_spent"] <= 8.0 + 1e-6
    after = dict(session.unwrapped.named_parameters())
    assert any(not torch.equal(after[n], before) for n, before in trainable.items())
    if method == "lora":
        assert all("lora" in n or "classifier" in n for n in trainable)
