"""Sequential recommendation: split, full-ranking metrics, models, artifact loader, CLI."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_helpers import make_ctx

from shoestring.core.errors import ShoestringError
from shoestring.train.config import TrainConfig
from shoestring.train.recsys import full_ranks, load_recommender, rank_metrics, train_recommender
from shoestring.train.recsys_data import Event, EventLog, leave_last_out, load_event_artifact, load_movielens_100k
from shoestring.train.recsys_models import GRURec, SASRec

NUM_ITEMS = 30


def cycle_events(users: int = 60, length: int = 12, seed: int = 0) -> list[dict[str, Any]]:
    """Each user walks the catalogue in order from a random start: next item = previous + 1."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u in range(users):
        start = int(torch.randint(0, NUM_ITEMS, (1,), generator=g))
        for t in range(length):
            rows.append({"id": f"{u}-{t}", "text": "", "user_id": f"u{u}", "item_id": f"i{(start + t) % NUM_ITEMS}",
                         "timestamp": 1_000_000 + 60 * t, "gender": "F" if u % 2 else "M"})
    return rows


def write_event_dataset(root: Path, rows: list[dict[str, Any]], bad: list[str] = ()) -> Path:  # type: ignore[assignment]
    """A dataset artifact folder (curate's contract) holding event rows (+ raw bad lines)."""
    root.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:half]) + "".join(b + "\n" for b in bad))
    (root / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[half:]))
    (root / "test.jsonl").write_text("")
    digest = hashlib.sha256((root / "train.jsonl").read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps({"kind": "dataset", "stage": "curate", "hash": digest, "stats": {}}))
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(arch: str, **extra: Any) -> TrainConfig:
    return TrainConfig.model_validate({
        "task": "sequential-recommendation", "epochs": 25, "micro_batch_size": 16, "lr": 0.01, "seed": 0,
        "dropout": 0.0, "recsys": {"architecture": arch, "max_len": 8, "hidden_size": 32, "num_layers": 1}, **extra,
    })


def test_leave_last_out_orders_by_time_and_skips_short_users() -> None:
    log = EventLog(events=[
        Event("a", "x", 3.0), Event("a", "y", 1.0), Event("a", "z", 2.0), Event("a", "w", 4.0),
        Event("b", "x", 1.0), Event("b", "y", 2.0),  # only 2 events: cannot give train/val/test
    ])
    split = leave_last_out(log, min_user_events=3)
    assert split.users == ["a"] and split.skipped_users == 1
    names = [split.item_ids[i] for i in split.sequences[0]]
    assert names == ["y", "z", "x", "w"]
    hist, target = split.test_case(0)
    assert [split.item_ids[i] for i in hist] == ["y", "z", "x"] and split.item_ids[target] == "w"
    hist, target = split.validation_case(0)
    assert [split.item_ids[i] for i in hist] == ["y", "z"] and split.item_ids[target] == "x"
    with pytest.raises(ShoestringError, match="min_user_events"):
        leave_last_out(log, min_user_events=10)


def test_full_ranking_excludes_seen_items_and_averages_ties() -> None:
    # Catalogue of 5 items (+ padding column 0). Scores are the same for every user.
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 3.0, 1.0]])
    fn = lambda seqs: scores.expand(seqs.shape[0], -1)  # noqa: E731
    cases = [([1], 2), ([], 2), ([1, 2], 5), ([], 3)]
    ranks = full_ranks(fn, cases, max_len=4)
    # item 2 after seeing 1: item 1 excluded -> rank 1; unseen history -> item 1 beats it -> 2;
    # item 5 after 1, 2: items 3 and 4 beat it -> 3; item 3 ties with item 4 -> mean rank 3.5.
    assert ranks == [1.0, 2.0, 3.0, 3.5]
    assert full_ranks(fn, [([1], 2)], max_len=4, exclude_seen=False) == [2.0]
    m = rank_metrics([1.0, 2.0, 30.0], k=10)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(3)) / 3)
    assert m["mrr"] == pytest.approx((1 + 0.5 + 1 / 30) / 3)


def test_movielens_100k_is_read_from_the_recbole_wheel() -> None:
    log = load_movielens_100k()
    assert len(log.events) == 100_000 and log.read == 100_000
    assert len({e.user for e in log.events}) == 943 and len({e.item for e in log.events}) == 1682
    assert log.users["1"]["gender"] == "M" and log.users["2"]["occupation"] == "other"
    assert log.items["1"]["movie_title"] == "Toy Story"
    liked = load_movielens_100k(rating_threshold=4)
    assert 0 < len(liked.events) < 100_000 and all(e.rating is not None and e.rating >= 4 for e in liked.events)


def test_event_artifact_quarantines_bad_rows(tmp_path: Path) -> None:
    rows = cycle_events(users=4, length=5)
    folder = write_event_dataset(tmp_path / "ds", rows, bad=['{"user_id": "u9"}', "not json",
                                                            '{"user_id": "u9", "item_id": "i1", "timestamp": "yesterday"}'])
    log = load_event_artifact(folder)
    assert len(log.events) == 20 and log.read == 23 and log.quarantined == 3
    assert log.quarantine_reasons == {"missing_user_item_or_timestamp": 1, "invalid_json": 1, "bad_timestamp": 1}
    assert log.users["u1"]["gender"] == "F"


@pytest.mark.parametrize("model", [SASRec(NUM_ITEMS, max_len=6, hidden_size=16), GRURec(NUM_ITEMS, hidden_size=16)])
def test_models_are_causal(model: torch.nn.Module) -> None:
    model.eval()
    seqs = torch.tensor([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    hidden = model.encode(seqs)  # type: ignore[operator]
    assert hidden.shape == (2, 6, 16)
    # Changing a later item must not change earlier positions (no peeking at the future).
    later = seqs.clone()
    later[:, -1] = 9
    assert torch.allclose(model.encode(later)[:, :-1], hidden[:, :-1], atol=1e-6)  # type: ignore[operator]
    assert torch.isfinite(model.score_last(seqs)[:, 1:]).all()  # type: ignore[operator]


def test_sasrec_ignores_left_padding() -> None:
    # Pads are masked out of attention and positions are right-aligned, so the amount of
    # padding must not change the scores. (The GRU instead always sees histories padded to
    # max_len, in training and at inference, so its pad steps act as a learned start state.)
    model = SASRec(NUM_ITEMS, max_len=6, hidden_size=16).eval()
    padded = model.score_last(torch.tensor([[0, 0, 3, 4, 5, 6]]))
    bare = model.score_last(torch.tensor([[3, 4, 5, 6]]))
    assert torch.allclose(padded, bare, atol=1e-5)


@pytest.mark.parametrize("arch", ["sasrec", "gru"])
def test_models_learn_next_item_and_beat_popularity(tmp_path: Path, arch: str) -> None:
    folder = write_event_dataset(tmp_path / "ds", cycle_events())
    ctx = make_ctx(tmp_path, folder)
    stats = train_recommender(tiny_cfg(arch), ctx)
    assert stats["users"] == 60 and stats["items"] == NUM_ITEMS
    assert stats["test"]["hr@10"] > 0.9, stats["test"]
    assert stats["test"]["ndcg@10"] > stats["popularity_test"]["ndcg@10"] + 0.3
    rows = [json.loads(r) for r in (ctx.out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] / 2
    assert (ctx.out_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert ctx.extra_manifest["task"] == "sequential-recommendation"

    rec = load_recommender(ctx.out_dir)
    top = rec.recommend(["i3", "i4", "i5"], k=3)
    assert top[0][0] == "i6" and len(top) == 3 and all(i not in {"i3", "i4", "i5"} for i, _ in top)
    assert rec.score_next([["i1"], ["i2", "unknown-item"]]).shape == (2, NUM_ITEMS)
    assert rec.users["u1"] == {"gender": "F"}
    assert rec.evaluate(k=10)["hr@10"] == pytest.approx(stats["test"]["hr@10"])
    assert rec.evaluate(k=10, users=["u1", "u3"])["users"] == 2
    assert rec.recommend_for_user("u0", k=1)[0][0] not in rec.sequences["u0"]
    with pytest.raises(ShoestringError, match="unknown user"):
        rec.recommend_for_user("nobody")


def test_resume_continues_like_an_uninterrupted_run(tmp_path: Path) -> None:
    folder = write_event_dataset(tmp_path / "ds", cycle_events(users=20, length=8))
    cfg = tiny_cfg("sasrec", epochs=4, dropout=0.2, early_stopping_patience=100)
    full = train_recommender(cfg, make_ctx(tmp_path / "full", folder))
    # Run 2 epochs, then a new run with 4 planned epochs resumes from the same work folder.
    part_ctx = make_ctx(tmp_path / "part", folder)
    train_recommender(tiny_cfg("sasrec", epochs=2, dropout=0.2, early_stopping_patience=100), part_ctx)
    resumed = train_recommender(cfg, part_ctx)
    assert resumed["resumed_from_epoch"] == 2
    assert resumed["validation"] == pytest.approx(full["validation"])
    assert resumed["test"] == pytest.approx(full["test"])


def test_popularity_baseline_and_clear_errors(tmp_path: Path) -> None:
    folder = write_event_dataset(tmp_path / "ds", cycle_events(users=10, length=5))
    ctx = make_ctx(tmp_path, folder)
    stats = train_recommender(tiny_cfg("popularity"), ctx)
    assert stats["test"] == stats["popularity_test"]
    assert len(load_recommender(ctx.out_dir).recommend([], k=5)) == 5
    with pytest.raises(ShoestringError, match="needs events"):
        train_recommender(tiny_cfg("gru"), make_ctx(tmp_path / "none"))
    with pytest.raises(ShoestringError, match="not recommendation"):
        train_recommender(tiny_cfg("gru", privacy={"noise_multiplier": 1.0}), make_ctx(tmp_path / "dp", folder))
    with pytest.raises(ShoestringError, match=r"no model/shoestring_model\.json"):
        load_recommender(tmp_path)


def test_recommend_verb_prints_top_items(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from shoestring.train.recsys_cli import register

    folder = write_event_dataset(tmp_path / "ds", cycle_events(users=10, length=5))
    ctx = make_ctx(tmp_path, folder)
    train_recommender(tiny_cfg("popularity"), ctx)
    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps typer from collapsing the app into one verb
    def _noop() -> None: ...

    runner = CliRunner()
    res = runner.invoke(app, ["recommend", str(ctx.out_dir), "--history", "i1,i2,nope", "-k", "3"])
    assert res.exit_code == 0, res.output
    assert "top 3 after 3 item(s)" in res.output and res.output.count("│ i") >= 3
    res = runner.invoke(app, ["recommend", str(ctx.out_dir), "--user", "u1", "-k", "2"])
    assert res.exit_code == 0 and "top 2" in res.output
    res = runner.invoke(app, ["recommend", str(ctx.out_dir)])
    assert isinstance(res.exception, ShoestringError)
