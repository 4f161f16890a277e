"""Differentially private training (DP-SGD via Opacus) shared by the train tasks.

Two modes: target-epsilon (Opacus picks the noise multiplier for the planned epochs) and
fixed-noise (``noise_multiplier`` given; epsilon is whatever the accountant says was spent).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from shoestring.core.config import StageConfig

__all__ = ["PrivacyOptions", "make_private", "privacy_report", "check_dp_compatible"]


class PrivacyOptions(StageConfig):
    """DP-SGD settings; give ``target_epsilon`` or ``noise_multiplier`` (not both)."""

    target_epsilon: float | None = None
    """Privacy budget epsilon to reach at the end of training (target-epsilon mode)."""
    noise_multiplier: float | None = None
    """Gaussian noise std / max_grad_norm (fixed-noise mode); epsilon spent is reported."""
    delta: float | None = None
    """Privacy delta; None uses 1 / (10 * number of training examples)."""
    max_grad_norm: float = 1.0
    """Per-example gradient clipping bound (L2 norm)."""
    accountant: Literal["prv", "rdp", "gdp"] = "prv"
    """Opacus privacy accountant used to compute the epsilon spent."""
    poisson_sampling: bool = True
    """Sample batches with Poisson sampling, as the DP-SGD analysis assumes."""

    @model_validator(mode="after")
    def _one_mode(self) -> PrivacyOptions:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of target_epsilon (target mode) or noise_multiplier (fixed-noise mode)")
        return self


def check_dp_compatible(model: Any) -> Any:
    """Return ``model`` made Opacus-compatible or raise a one-line ShoestringError."""
    raise NotImplementedError("being implemented")


def make_private(
    model: Any, optimizer: Any, data_loader: Any, options: PrivacyOptions, epochs: int
) -> tuple[Any, Any, Any, Any]:
    """Wrap model/optimizer/loader with Opacus; return (model, optimizer, loader, engine)."""
    raise NotImplementedError("being implemented")


def privacy_report(engine: Any, options: PrivacyOptions, delta: float) -> dict[str, Any]:
    """Stats for the manifest: epsilon_spent, delta, noise_multiplier, accountant."""
    raise NotImplementedError("being implemented")
