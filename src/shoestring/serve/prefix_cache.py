"""Which cached prompt prefix a new prompt can reuse, and which entry to evict.

Engines keep a few finished prompts' KV in spare slots. A new prompt that starts with the
same tokens (a shared system prompt, a chat template's default preamble, few-shot examples)
copies that KV instead of recomputing it, which shortens its prefill and so its time to
first token. This module only does the bookkeeping; the engine copies the KV.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PrefixCache", "PrefixHit"]


@dataclass
class _Entry:
    slot: int
    tokens: tuple[int, ...]
    last_used: int


@dataclass(frozen=True)
class PrefixHit:
    slot: int
    """The spare slot whose first ``length`` positions hold the shared prefix's KV."""
    length: int
    """Prompt tokens that need no prefill (tokens)."""


def _common(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """Up to ``len(slots)`` cached prompts, least recently used evicted first.

    ``min_tokens`` is the shortest prefix worth copying (shorter ones cost more in bookkeeping
    than they save).
    """

    def __init__(self, slots: list[int], min_tokens: int = 16) -> None:
        self.spare = list(slots)
        self.min_tokens = min_tokens
        self.entries: list[_Entry] = []
        self._clock = 0
        self.hits = 0
        self.lookups = 0
        self.reused_tokens = 0

    def lookup(self, prompt: list[int]) -> PrefixHit | None:
        """The entry sharing the longest prefix with ``prompt`` (leaving >= 1 token to feed)."""
        self.lookups += 1
        best: _Entry | None = None
        best_len = 0
        for e in self.entries:
            n = min(_common(e.tokens, prompt), len(prompt) - 1)
            if n > best_len:
                best, best_len = e, n
        if best is None or best_len < self.min_tokens:
            return None
        self._clock += 1
        best.last_used = self._clock
        self.hits += 1
        self.reused_tokens += best_len
        return PrefixHit(best.slot, best_len)

    def offer(self, prompt: list[int]) -> int | None:
        """A spare slot to copy ``prompt``'s KV into, or None if it is not worth caching.

        Not cached: prompts shorter than ``min_tokens``, and prompts an entry already covers.
        """
        if not self.spare or len(prompt) < self.min_tokens:
            return None
        if any(_common(e.tokens, prompt) >= len(prompt) for e in self.entries):
            return None
        self._clock += 1
        if len(self.entries) < len(self.spare):
            used = {e.slot for e in self.entries}
            slot = next(s for s in self.spare if s not in used)
            self.entries.append(_Entry(slot, tuple(prompt), self._clock))
            return slot
        victim = min(self.entries, key=lambda e: e.last_used)
        victim.tokens, victim.last_used = tuple(prompt), self._clock
        return victim.slot
