"""Next-item models: GRU4Rec-style recurrent and SASRec-style self-attentive encoders.

Both take left-padded item-index sequences ``(B, L)`` (0 = padding, the latest item in the
last column) and return hidden states ``(B, L, H)``; scores over the catalogue are the dot
product with the (tied) item embedding table, as in SASRec.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["GRURec", "SASRec", "build_recommender_model"]


class _ItemScorer(nn.Module):
    """Shared part: tied item embeddings, catalogue scoring and next-item loss."""

    item_emb: nn.Embedding

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _init_weights(self) -> None:
        # Small normal init: with tied output embeddings, N(0, 1) rows would start the
        # logits at +-60 and the loss far above log(num_items).
        for m in self.modules():
            if isinstance(m, nn.Embedding | nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over all items ``(..., N+1)``; column 0 (padding) is -inf."""
        out = hidden @ self.item_emb.weight.T  # (B, L, N+1)
        out[..., 0] = float("-inf")
        return out

    def score_last(self, seqs: torch.Tensor) -> torch.Tensor:
        """Next-item scores after each whole sequence ``(B, N+1)``."""
        return self.logits(self.encode(seqs)[:, -1, :])

    def loss(self, seqs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean full-softmax cross-entropy of the next item at every non-pad position."""
        logits = self.logits(self.encode(seqs))  # (B, L, N+1)
        return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)


class GRURec(_ItemScorer):
    """GRU4Rec-style model: embeddings -> stacked GRU -> projection to the embedding space."""

    def __init__(self, num_items: int, hidden_size: int = 64, num_layers: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(
            hidden_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.scale = math.sqrt(hidden_size)
        self._init_weights()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        # Scale the small-init embeddings up (as SASRec does) so the GRU sees O(1) inputs.
        x = self.drop(self.item_emb(seqs) * self.scale)  # (B, L, H)
        out, _ = self.gru(x)  # (B, L, H)
        return self.proj(self.drop(out))


class _Block(nn.Module):
    """Pre-LayerNorm transformer block with causal, padding-aware self-attention."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} must be divisible by num_heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.ff1 = nn.Linear(hidden, hidden)
        self.ff2 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)  # each (B, T, C)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, h, T, C/h)
        att = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, h, T, C/h)
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop(self.ff2(self.drop(nn.functional.gelu(self.ff1(self.ln2(x))))))


class SASRec(_ItemScorer):
    """SASRec-style model: item + learned position embeddings -> causal transformer blocks."""

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.item_emb = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden_size)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([_Block(hidden_size, num_heads, dropout) for _ in range(num_layers)])
        self.ln = nn.LayerNorm(hidden_size)
        self.scale = math.sqrt(hidden_size)
        self._init_weights()

    def encode(self, seqs: torch.Tensor) -> torch.Tensor:
        _b, t = seqs.shape
        if t > self.max_len:
            seqs = seqs[:, -self.max_len :]
            t = self.max_len
        # Right-aligned positions: the latest item always sits at position max_len - 1.
        pos = torch.arange(self.max_len - t, self.max_len, device=seqs.device)
        real = seqs != 0  # (B, T)
        x = self.item_emb(seqs) * self.scale + self.pos_emb(pos)  # (B, T, C)
        x = self.drop(x) * real.unsqueeze(-1)
        causal = torch.ones(t, t, dtype=torch.bool, device=seqs.device).tril()
        # A query may look at earlier real items and always at itself (so padding rows stay finite).
        allowed = causal & (real.unsqueeze(1) | torch.eye(t, dtype=torch.bool, device=seqs.device))  # (B, T, T)
        allowed = allowed.unsqueeze(1)  # (B, 1, T, T)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln(x)


def build_recommender_model(architecture: str, num_items: int, hparams: dict[str, Any]) -> _ItemScorer:
    """Instantiate a model from the architecture name and the hyper-parameters saved with it."""
    if architecture == "gru":
        return GRURec(num_items, hparams["hidden_size"], hparams["num_layers"], hparams["dropout"])
    if architecture == "sasrec":
        return SASRec(
            num_items,
            hparams["max_len"],
            hparams["hidden_size"],
            hparams["num_layers"],
            hparams["num_heads"],
            hparams["dropout"],
        )
    raise ValueError(f"unknown recommender architecture {architecture!r}; use 'sasrec' or 'gru'")
