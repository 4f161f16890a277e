"""The engine protocol every generation backend implements, and what they share.

An engine holds a model and the KV state of up to ``info.max_seqs`` sequences, each in a
slot. The scheduler (``generation.py``) drives it with four calls:

* ``admit(prompt, sampling)`` reserves a slot and returns ``(slot, cached)``: the first
  ``cached`` prompt tokens are already in the slot's cache (prefix cache), so only the rest
  needs a prefill;
* ``step(work)`` runs **one** forward over every item of ``work`` - prefill chunks (many
  tokens of one slot) and decode tokens (one per running slot) together - and returns the
  sampled next token of each item whose ``sample`` is set, keyed by slot;
* ``free(slot)`` ends a sequence (finished, cancelled or failed) and releases its slot;
* ``stats()`` reports counters for ``/metrics`` and ``/v1/models``.

Engines are used from the scheduler's one model thread only, so they need no locking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

__all__ = ["Engine", "EngineFull", "EngineInfo", "Sampling", "SlotTable", "Work", "sample_tokens"]


class EngineFull(Exception):
    """No free slot (the scheduler admits at most ``info.max_seqs`` sequences)."""


@dataclass(frozen=True)
class Sampling:
    """How one sequence picks its next token."""

    temperature: float = 0.0
    """0 = greedy (argmax); otherwise logits are divided by it before sampling."""
    top_p: float = 1.0
    """Nucleus sampling: sample among the most likely tokens whose probabilities sum to top_p."""
    seed: int | None = None
    """Seed of this sequence's own generator, so the same request samples the same tokens."""


@dataclass
class Work:
    """What one slot feeds in a step."""

    slot: int
    tokens: list[int]
    """Tokens to feed: a prompt chunk, or the one token sampled last step."""
    start: int
    """Position of ``tokens[0]`` in the sequence (tokens)."""
    sample: bool
    """Sample a next token after the last of ``tokens`` (the prompt is complete, or decoding)."""


@dataclass
class EngineInfo:
    """What the scheduler and ``/v1/models`` need to know about an engine."""

    name: str
    """'torch', 'llama.cpp' or 'vllm'."""
    max_seqs: int
    """Sequences it can hold at once; 1 means requests are served one at a time."""
    context_length: int
    """Most tokens (prompt + generated) one sequence may hold."""
    prefill_chunk: int
    """Most prompt tokens fed in one step; longer prompts are prefilled over several steps,
    interleaved with the running sequences' decode tokens."""
    details: dict[str, Any] = field(default_factory=dict)
    """Backend-specific facts (weights dtype, kernel, threads, why it was chosen)."""

    @property
    def batched(self) -> bool:
        return self.max_seqs > 1


class Engine(Protocol):
    """A generation backend: see the module docstring for the call sequence."""

    info: EngineInfo

    def admit(self, prompt: list[int], sampling: Sampling) -> tuple[int, int]: ...

    def step(self, work: list[Work]) -> dict[int, int]: ...

    def free(self, slot: int) -> None: ...

    def stats(self) -> dict[str, float]: ...


def sample_tokens(
    logits: torch.Tensor, sampling: list[Sampling], generators: list[torch.Generator | None]
) -> list[int]:
    """Next token per row of ``logits`` (rows, vocab), for all rows at once.

    Greedy rows take the argmax. Sampled rows use the exponential-race form of categorical
    sampling - argmax(p / E) with E ~ Exp(1) - which draws exactly from p and vectorises:
    one softmax, one sort (only when a row has top_p < 1) and one argmax over the batch.
    Rows with a seed draw their noise from their own generator, so a seeded request samples
    the same tokens whatever else shares its batch.
    """
    import torch

    greedy = logits.argmax(-1)  # (B,)
    hot = [i for i, s in enumerate(sampling) if s.temperature > 0]
    if not hot:
        return [int(t) for t in greedy.tolist()]
    rows = torch.tensor(hot, device=logits.device)
    temps = torch.tensor([sampling[i].temperature for i in hot], device=logits.device, dtype=torch.float32)
    probs = torch.softmax(logits[rows].float() / temps[:, None], -1)  # (H, V)
    top_p = torch.tensor([sampling[i].top_p for i in hot], device=logits.device, dtype=torch.float32)
    order = None
    if bool((top_p < 1).any()):
        probs, order = probs.sort(-1, descending=True)
        keep = probs.cumsum(-1) - probs < top_p[:, None]  # always keeps the most likely token
        probs = probs * keep
    noise = torch.empty_like(probs)
    seeded = [j for j, i in enumerate(hot) if generators[i] is not None]
    for j in seeded:  # per seeded row only: its own stream of draws
        noise[j].exponential_(generator=generators[hot[j]])
    if len(seeded) < len(hot):
        free = torch.tensor([j for j in range(len(hot)) if j not in set(seeded)], device=logits.device)
        noise[free] = torch.empty((len(free), probs.shape[1]), device=logits.device).exponential_()
    pick = (probs / noise).argmax(-1)  # (H,)
    if order is not None:
        pick = order.gather(1, pick[:, None])[:, 0]
    out = greedy.clone()
    out[rows] = pick
    return [int(t) for t in out.tolist()]


class SlotTable:
    """Slot bookkeeping an engine shares: free slots, and each slot's prompt, sampling and generator."""

    def __init__(self, n: int, vocab: int) -> None:
        self.free_slots = list(range(n - 1, -1, -1))
        self.vocab = vocab
        self.sampling: dict[int, Sampling] = {}
        self.generators: dict[int, Any] = {}
        self.prompts: dict[int, list[int]] = {}

    def take(self, prompt: list[int], sampling: Sampling) -> int:
        import torch

        bad = [t for t in prompt if not 0 <= t < self.vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the model's vocabulary of {self.vocab}")
        if not self.free_slots:
            raise EngineFull()
        slot = self.free_slots.pop()
        self.sampling[slot] = sampling
        self.generators[slot] = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        self.prompts[slot] = prompt
        return slot

    def release(self, slot: int) -> None:
        if slot in self.sampling:
            del self.sampling[slot], self.generators[slot], self.prompts[slot]
            self.free_slots.append(slot)

    def sample(self, logits: torch.Tensor, slots: list[int]) -> dict[int, int]:
        toks = sample_tokens(logits, [self.sampling[s] for s in slots], [self.generators[s] for s in slots])
        return dict(zip(slots, toks, strict=True))
