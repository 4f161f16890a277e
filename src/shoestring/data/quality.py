"""Quality heuristics in the style of Gopher (Rae et al. 2021) and C4, plus offline language ID.

Each rule drops with its own reason so the data card shows which rule removed what.
Defaults (see :class:`~shoestring.data.config.QualityConfig`) are Gopher's published values.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from shoestring.core.artifact import atomic_write_bytes
from shoestring.data.config import QualityConfig
from shoestring.data.records import Drop, OpStats, Record, full_text

__all__ = ["STOP_WORDS", "detect_language", "quality_check", "quality_record", "text_signals"]

# Gopher's stop-word rule uses these eight; we accept a slightly wider common set.
_STOP = "the be to of and that have with a an in is it for on as at by this you your not are or if can"
STOP_WORDS = frozenset(_STOP.split(" "))

_langid: Any = None


def _load_langid() -> Any:
    """langid.py's bundled model; decoded once (bz2 + pickle, slow) and cached as a plain pickle."""
    import pickle

    from langid.langid import LanguageIdentifier, model

    from shoestring.models.loading import cache_dir

    cached = cache_dir() / "langid-model-v1.pkl"
    try:
        with open(cached, "rb") as fh:
            parts = pickle.load(fh)  # our own cache file, written below
        return LanguageIdentifier(*parts, norm_probs=True)
    except (OSError, pickle.UnpicklingError, EOFError, TypeError):
        pass
    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    parts = (ident.nb_ptc, ident.nb_pc, ident.nb_numfeats, ident.nb_classes, ident.tk_nextmove, ident.tk_output)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError:
        pass  # a read-only cache only costs speed
    return ident


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) from langid.py's bundled model (no network)."""
    global _langid
    if _langid is None:
        _langid = _load_langid()
    lang, prob = _langid.classify(text[:5000])
    return str(lang), float(prob)


_DIGIT = re.compile(r"\d")
# A whitespace-delimited word with no letter in it (numbers, punctuation, symbols).
_NO_LETTER_WORD = re.compile(r"(?<!\S)(?:(?![^\W\d_])\S)+(?!\S)")
_STRIP = ".,;:!?\"'()"


def _ngram_fractions(words: list[str], total_chars: int) -> tuple[float, float]:
    """(chars in the most frequent 2-gram / total, chars in repeated 5-grams / total).

    Vectorised: words become integer ids, n-grams become one int64 key each.
    """
    n = len(words)
    if total_chars == 0 or n < 2:
        return 0.0, 0.0
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.int64, count=n)
    lens = np.fromiter((len(w) for w in words), dtype=np.int64, count=n)
    v = np.int64(len(vocab) + 1)
    bigrams = ids[:-1] * v + ids[1:]  # (n-1,) one key per 2-gram; exact while v^2 < 2^63
    _, first, counts = np.unique(bigrams, return_index=True, return_counts=True)
    top = int(np.argmax(counts))
    top_count = int(counts[top])
    i = int(first[top])
    top_frac = float(lens[i] + lens[i + 1]) * top_count / total_chars if top_count > 1 else 0.0
    if n < 5:
        return top_frac, 0.0
    with np.errstate(over="ignore"):
        keys = ids[:-4].astype(np.uint64)
        for j in range(1, 5):  # polynomial key of 5 consecutive ids (collisions are negligible)
            keys = keys * np.uint64(1_000_003) + ids[j : n - 4 + j].astype(np.uint64)
    _, inverse, counts5 = np.unique(keys, return_inverse=True, return_counts=True)
    starts = (counts5[inverse] > 1).astype(np.int64)  # (n-4,) 1 where a repeated 5-gram starts
    covered = np.convolve(starts, np.ones(5, dtype=np.int64))[:n] > 0  # (n,) words inside one
    return top_frac, float(lens[covered].sum()) / total_chars


def text_signals(text: str) -> dict[str, float]:
    """The numbers the rules test, for one text (also used by the data card)."""
    words = text.split()
    n = len(words)
    chars = sum(map(len, words))
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    dup_lines = len(lines) - len(set(lines))
    lowered = text.lower().split()
    lowered = [w.strip(_STRIP) for w in lowered]
    top2, dup5 = _ngram_fractions(lowered, chars)
    return {
        "words": n,
        "mean_word_length": chars / n if n else 0.0,
        "symbol_ratio": (text.count("#") + text.count("...") + text.count("\u2026")) / n if n else 0.0,
        "digit_ratio": len(_DIGIT.findall(text)) / len(text) if text else 0.0,
        "alpha_word_fraction": (n - len(_NO_LETTER_WORD.findall(text))) / n if n else 0.0,
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
