"""Augmentation for small datasets: EDA-style word-level noise, reproducible with a seed.

Applied to training records only (after the split, so no augmented copy can leak into
validation or test). For instruction data only the *instruction* is perturbed: the response
is the supervision target and is kept verbatim.

Methods (each applied with strength ``p``):

* ``word_dropout`` - delete each word with probability p (at least one word stays);
* ``word_swap`` - swap round(p x words) random pairs of adjacent words;
* ``char_typo`` - in round(p x words) random words of 4+ letters, swap two inner letters.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from shoestring.data.config import AugmentConfig
from shoestring.data.records import Record

__all__ = ["augment_record", "augment_text"]


def augment_text(text: str, methods: Sequence[str], p: float, rng: random.Random) -> str:
    words = text.split(" ")
    if len(words) < 2:
        return text
    for method in methods:
        if method == "word_dropout":
            kept = [w for w in words if rng.random() >= p]
            words = kept or [words[0]]
        elif method == "word_swap":
            for _ in range(max(1, round(p * len(words)))):
                if len(words) < 2:
                    break
                i = rng.randrange(len(words) - 1)
                words[i], words[i + 1] = words[i + 1], words[i]
        elif method == "char_typo":
            for _ in range(max(1, round(p * len(words)))):
                i = rng.randrange(len(words))
                w = words[i]
                if len(w) >= 4 and w.isalpha():
                    j = rng.randrange(1, len(w) - 2)
                    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def augment_record(rec: Record, cfg: AugmentConfig, rng: random.Random, copy: int) -> Record:
    """An augmented copy of a finished record (id suffixed ``#aug<copy>``, ``augmented: true``)."""
    out = dict(rec)
    out["id"] = f"{rec['id']}#aug{copy}"
    out["augmented"] = True
    methods = list(cfg.methods)
    if isinstance(rec.get("instruction"), str) and isinstance(rec.get("response"), str):
        out["instruction"] = augment_text(rec["instruction"], methods, cfg.p, rng)
        user = out["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        out["messages"] = [
            {"role": "user", "content": user} if m["role"] == "user" else dict(m) for m in rec.get("messages", [])
        ]
        out["text"] = "\n\n".join(x for x in (out["instruction"], rec.get("input") or "", rec["response"]) if x)
    else:
        out["text"] = augment_text(str(rec.get("text", "")), methods, cfg.p, rng)
    return out
