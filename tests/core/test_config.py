from __future__ import annotations

from pathlib import Path

import pytest
import toy_stage

from shoestring.core.config import load_yaml, parse_config
from shoestring.core.errors import ShoestringError


def test_unknown_key_names_key_and_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ShoestringError) as ei:
        parse_config(toy_stage.ToyConfig, {"source": "x", "factr": 2}, "recipe.yaml: stages.toy")
    msg = str(ei.value)
    assert "unknown key 'factr'" in msg and "valid keys:" in msg and "factor" in msg
    assert "\n" not in msg


def test_wrong_type_and_missing_key() -> None:
    with pytest.raises(ShoestringError, match=r"factor: .*integer.*got \"two\""):
        parse_config(toy_stage.ToyConfig, {"source": "x", "factor": "two"}, "r")
    with pytest.raises(ShoestringError, match="missing required key 'source'"):
        parse_config(toy_stage.ToyConfig, {}, "r")
    with pytest.raises(ShoestringError, match="missing required flag '--source'"):
        parse_config(toy_stage.ToyConfig, {}, "shoestring toy", as_flags=True)
    with pytest.raises(ShoestringError, match="mode"):
        parse_config(toy_stage.ToyConfig, {"source": "x", "mode": "triple"}, "r")


def test_field_docstrings_are_descriptions() -> None:
    assert toy_stage.ToyConfig.model_fields["factor"].description == "Multiply the count by this."


def test_load_yaml_errors(tmp_path: Path) -> None:
    with pytest.raises(ShoestringError, match="file not found"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  a: [1, 2\n")
    with pytest.raises(ShoestringError, match="malformed YAML at line"):
        load_yaml(bad)
