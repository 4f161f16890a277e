from __future__ import annotations

from shoestring.report.render import before_after, flatten


def test_before_after_reads_evaluation_stats() -> None:
    stats = {"loss": 1.5, "compare_loss": 2.0, "perplexity": 4.48, "compare_perplexity": 7.39, "p_value": 0.001}
    rows = before_after(stats)
    assert rows["held-out loss"] == {"before": 2.0, "after": 1.5, "change %": -25.0}
    assert rows["held-out perplexity"]["change %"] == round(100 * (4.48 - 7.39) / 7.39, 2)
    assert before_after({"loss": 1.0}) == {"held-out loss": {"before": None, "after": 1.0}}


def test_flatten_nests_with_dots() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 3}]}) == {"a.b": 1, "a.c": [1, 2], "d.0.e": 3}
