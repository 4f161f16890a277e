from __future__ import annotations

from pathlib import Path

import pytest

from shoestring.core.errors import ShoestringError
from shoestring.core.recipe import load_recipe, run_recipe
from shoestring.core.registry import STAGES

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_shipped_recipe_parses(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(recipe.parents[1])  # recipes use paths relative to the repo root
    try:
        parsed, stages = load_recipe(recipe)
    except ShoestringError as err:
        # A recipe may start from another recipe's artifacts (compress.yaml starts from the
        # quickstart's); on a checkout where that recipe has not run, the one-line error
        # must say so, and nothing else may fail.
        if "run that recipe first" not in str(err):
            raise
        pytest.skip(f"{recipe.name} needs another recipe's artifacts, not built here: {err}")
    assert stages, f"{recipe} has no stages"
    assert parsed.description, f"{recipe} needs a description for `shoestring recipes list`"


def test_there_are_recipes() -> None:
    assert any(r.name == "quickstart.yaml" for r in RECIPES)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STAGES, "toy", "toy_stage")


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_recipe_chains_and_caches(tmp_path: Path, toy: None) -> None:
    (tmp_path / "l.txt").write_text("1\n2\n")
    r = _write(
        tmp_path,
        f"name: t\ndescription: d\nworkspace: {tmp_path / 'ws'}\nstages:\n"
        f"  first: {{stage: toy, source: {tmp_path / 'l.txt'}}}\n"
        f"  second: {{stage: toy, source: {tmp_path / 'l.txt'}, upstream: first, factor: 3}}\n",
    )
    res = run_recipe(r)
    assert res["second"].artifact.stats["count"] == 8
    again = run_recipe(r)
    assert all(x.cached for x in again.values())
    assert (tmp_path / "ws" / "second").resolve() == res["second"].artifact.path
    forced = run_recipe(r, force={"second"})
    assert forced["first"].cached and not forced["second"].cached


def test_bad_recipes_fail_before_running(tmp_path: Path, toy: None) -> None:
    (tmp_path / "l.txt").write_text("1\n")
    cases = {
        "stages:\n  x: {stage: nosuch}\n": "unknown stage 'nosuch'",
        f"stages:\n  a: {{stage: toy, source: {tmp_path / 'l.txt'}, upstream: zzz}}\n": "'zzz' is neither",
        "stages: {}\n": "stages",
        f"stages:\n  a: {{stage: toy, source: {tmp_path / 'l.txt'}, factr: 1}}\n": "unknown key 'factr'",
        "nme: x\nstages:\n  a: {stage: toy}\n": "unknown key 'nme'",
        "- a\n- b\n": "must be a mapping",
    }
    for text, expected in cases.items():
        with pytest.raises(ShoestringError, match=expected):
            run_recipe(_write(tmp_path, text), workspace=tmp_path / "ws")
        assert not (tmp_path / "ws" / "artifacts").exists() or not any((tmp_path / "ws" / "artifacts").iterdir())


def test_overrides_change_config_and_are_validated(tmp_path: Path, toy: None) -> None:
    (tmp_path / "l.txt").write_text("1\n2\n")
    r = _write(
        tmp_path,
        f"description: d\nworkspace: {tmp_path / 'ws'}\nstages:\n  first: {{stage: toy, source: {tmp_path / 'l.txt'}}}\n",
    )
    res = run_recipe(r, overrides=["first.factor=5"])
    assert res["first"].artifact.stats["count"] == 10
    with pytest.raises(ShoestringError, match="no stage id 'nope'"):
        run_recipe(r, overrides=["nope.factor=1"])
    with pytest.raises(ShoestringError, match=r"STAGE_ID\.KEY=VALUE"):
        run_recipe(r, overrides=["factor"])
    with pytest.raises(ShoestringError, match="factor"):
        run_recipe(r, overrides=["first.factor=lots"])
