"""Programmatic labelling: labelling functions vote, a combiner decides, stats say how well.

Each :class:`~shoestring.data.config.LabelFunction` votes one label or abstains. Votes are
computed per record in the parallel phase (``_votes``); the combiner runs in the global
phase so that the ``model`` combiner can use accuracies estimated over the whole dataset:

* ``majority`` - the label with most votes; a tie abstains.
* ``model`` - each function's vote is weighted by log(acc / (1 - acc)), where acc is its
  agreement with the majority label on records where at least one other function voted
  (a one-step, Dawid-Skene-style estimate; Laplace-smoothed). Ties go to the lexically
  smallest label so results are deterministic.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

from shoestring.data.config import LabelConfig, LabelFunction
from shoestring.data.records import OpStats, Record, full_text

__all__ = ["LabelVoter", "combine_votes", "label_weights", "label_stats"]


class LabelVoter:
    """Runs the labelling functions on a record and stores their votes in ``_votes``."""

    def __init__(self, cfg: LabelConfig) -> None:
        self.cfg = cfg
        self._regex = {lf.name: re.compile(lf.regex) for lf in cfg.functions if lf.regex}

    def fires(self, lf: LabelFunction, rec: Record) -> bool:
        value = rec.get(lf.field) if lf.field else full_text(rec)
        if lf.equals is not None:
            return value is not None and str(value) == lf.equals
        text = "" if value is None else str(value)
        if lf.contains and any(c.lower() in text.lower() for c in lf.contains):
            return True
        pattern = self._regex.get(lf.name)
        return bool(pattern and pattern.search(text))

    def __call__(self, rec: Record, stats: OpStats) -> Record:
        votes = {lf.name: lf.label for lf in self.cfg.functions if self.fires(lf, rec)}
        rec["_votes"] = votes
        for name in votes:
            stats.counters[f"lf_fires:{name}"] += 1
        labels = set(votes.values())
        if votes:
            stats.counters["covered"] += 1
            maj = majority(votes)
            for name, lab in votes.items():
                if len(votes) > 1:
                    stats.counters[f"lf_overlap:{name}"] += 1
                    stats.counters[f"lf_agree:{name}"] += int(lab == maj)
        if len(votes) > 1:
            stats.counters["overlap"] += 1
        if len(labels) > 1:
            stats.counters["conflict"] += 1
            for name in votes:
                stats.counters[f"lf_conflict:{name}"] += 1
        return rec


def majority(votes: dict[str, str]) -> str | None:
    counts = Counter(votes.values()).most_common()
    if not counts or (len(counts) > 1 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def label_weights(cfg: LabelConfig, counters: Counter[str]) -> dict[str, float]:
    """Per-function log-odds weights from agreement with the majority (``model`` combiner)."""
    out = {}
    for lf in cfg.functions:
        overlap = counters.get(f"lf_overlap:{lf.name}", 0)
        agree = counters.get(f"lf_agree:{lf.name}", 0)
        acc = (agree + 1) / (overlap + 2)  # Laplace smoothing: no overlap -> 0.5 -> weight from prior
        acc = min(max(acc, 0.05), 0.95)
        out[lf.name] = math.log(acc / (1 - acc)) if overlap else 1.0
    return out


def combine_votes(votes: dict[str, str], cfg: LabelConfig, weights: dict[str, float]) -> str | None:
    """The combined label for one record's votes, or None (abstain)."""
    if not votes:
        return None
    if cfg.combine == "majority":
        return majority(votes)
    score: Counter[str] = Counter()
    for name, lab in votes.items():
        score[lab] += weights.get(name, 1.0)  # type: ignore[assignment]
    best = max(score.values())
    if best <= 0:
        return None
    return sorted(lab for lab, s in score.items() if s == best)[0]


def label_stats(cfg: LabelConfig, counters: Counter[str], seen: int, weights: dict[str, float]) -> dict[str, Any]:
    """Coverage / overlap / conflict, overall and per function, as fractions of records seen."""

    def frac(n: int) -> float:
        return round(n / seen, 4) if seen else 0.0

    per = {}
    for lf in cfg.functions:
        overlap = counters.get(f"lf_overlap:{lf.name}", 0)
        per[lf.name] = {
            "label": lf.label,
            "coverage": frac(counters.get(f"lf_fires:{lf.name}", 0)),
            "overlap": frac(overlap),
            "conflict": frac(counters.get(f"lf_conflict:{lf.name}", 0)),
            "estimated_accuracy": round((counters.get(f"lf_agree:{lf.name}", 0) + 1) / (overlap + 2), 4),
            "weight": round(weights.get(lf.name, 1.0), 4),
        }
    return {
        "combine": cfg.combine,
        "coverage": frac(counters.get("covered", 0)),
        "overlap": frac(counters.get("overlap", 0)),
        "conflict": frac(counters.get("conflict", 0)),
        "functions": per,
    }
