"""Quality heuristics in the style of Gopher (Rae et al. 2021) and C4, plus offline language ID.

Each rule drops with its own reason so the data card shows which rule removed what.
Defaults (see :class:`~shoestring.data.config.QualityConfig`) are Gopher's published values.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

from shoestring.data.config import QualityConfig
from shoestring.data.records import Drop, OpStats, Record, full_text

__all__ = ["STOP_WORDS", "detect_language", "quality_check", "quality_record", "text_signals"]

# Gopher's stop-word rule uses these eight; we accept a slightly wider common set.
_STOP = "the be to of and that have with a an in is it for on as at by this you your not are or if can"
STOP_WORDS = frozenset(_STOP.split(" "))

_langid: Any = None


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from langid.py's bundled model (no network)."""
    global _langid
    if _langid is None:
        from langid.langid import LanguageIdentifier, model

        _langid = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    lang, prob = _langid.classify(text[:5000])
    return str(lang), float(prob)


def _ngram_fractions(words: list[str], total_chars: int) -> tuple[float, float]:
    """(chars in the most frequent 2-gram / total, chars in repeated 5-grams / total)."""
    if total_chars == 0 or len(words) < 2:
        return 0.0, 0.0
    bigrams = Counter(itertools.pairwise(words))
    (top, top_count) = bigrams.most_common(1)[0]
    top_frac = (len(top[0]) + len(top[1])) * top_count / total_chars if top_count > 1 else 0.0
    if len(words) < 5:
        return top_frac, 0.0
    grams = [tuple(words[i : i + 5]) for i in range(len(words) - 4)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + 5):
                covered[j] = True
    dup_chars = sum(len(w) for w, c in zip(words, covered, strict=True) if c)
    return top_frac, dup_chars / total_chars


def text_signals(text: str) -> dict[str, float]:
    """The numbers the rules test, for one text (also used by the data card)."""
    words = text.split()
    n = len(words)
    chars = sum(len(w) for w in words)
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    seen: set[str] = set()
    dup_lines = 0
    for line in lines:
        if line in seen:
            dup_lines += 1
        seen.add(line)
    lowered = [w.lower().strip(".,;:!?\"'()") for w in words]
    top2, dup5 = _ngram_fractions(lowered, chars)
    return {
        "words": n,
        "mean_word_length": chars / n if n else 0.0,
        "symbol_ratio": (text.count("#") + text.count("...") + text.count("\u2026")) / n if n else 0.0,
        "digit_ratio": sum(ch.isdigit() for ch in text) / len(text) if text else 0.0,
        "alpha_word_fraction": sum(any(ch.isalpha() for ch in w) for w in words) / n if n else 0.0,
        "stop_words": sum(w in STOP_WORDS for w in lowered),
        "duplicate_line_fraction": dup_lines / len(lines) if lines else 0.0,
        "top_2gram_fraction": top2,
        "dup_5gram_fraction": dup5,
    }


def quality_check(text: str, cfg: QualityConfig) -> str | None:
    """The reason the text fails the rules, or None when it passes."""
    s = text_signals(text)
    if s["words"] < cfg.min_words:
        return "too_short"
    if s["words"] > cfg.max_words:
        return "too_long"
    if not cfg.min_mean_word_length <= s["mean_word_length"] <= cfg.max_mean_word_length:
        return "mean_word_length"
    if s["symbol_ratio"] > cfg.max_symbol_ratio:
        return "symbol_ratio"
    if s["digit_ratio"] > cfg.max_digit_ratio:
        return "digit_ratio"
    if s["alpha_word_fraction"] < cfg.min_alpha_word_fraction:
        return "alpha_words"
    if cfg.min_stop_words and s["stop_words"] < cfg.min_stop_words:
        return "stop_words"
    if s["duplicate_line_fraction"] > cfg.max_duplicate_line_fraction:
        return "duplicate_lines"
    if s["top_2gram_fraction"] > cfg.max_top_2gram_fraction:
        return "top_2gram"
    if s["dup_5gram_fraction"] > cfg.max_dup_5gram_fraction:
        return "dup_5gram"
    return None


def quality_record(rec: Record, stats: OpStats, cfg: QualityConfig) -> Record | Drop:
    text = full_text(rec)
    reason = quality_check(text, cfg)
    if reason is not None:
        return Drop(reason)
    if cfg.languages:
        lang, prob = detect_language(text)
        rec["language"] = lang
        stats.counters[f"language:{lang}"] += 1
        if lang not in cfg.languages or prob < cfg.min_language_score:
            return Drop("language")
    return rec
