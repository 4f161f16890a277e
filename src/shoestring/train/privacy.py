"""Differentially private training (DP-SGD via Opacus) shared by the train tasks.

Two modes: target-epsilon (Opacus picks the noise multiplier so the planned epochs end at
``target_epsilon``) and fixed-noise (``noise_multiplier`` given; the epsilon spent is whatever
the accountant says). Either way the (epsilon, delta) actually spent is read back from the
accountant and reported in the manifest stats by :func:`privacy_report`.

Usage (any ``nn.Module`` + optimizer + map-style ``DataLoader``)::

    session = make_private(model, optimizer, loader, options, epochs=10)
    for batch in session.data_loader: ...          # Poisson-sampled batches
    stats = privacy_report(session)                # epsilon_spent, delta, ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import model_validator

from shoestring.core.config import StageConfig
from shoestring.core.errors import ShoestringError

__all__ = [
    "DPSession",
    "PrivacyOptions",
    "accountant_history",
    "check_dp_compatible",
    "epsilon_for_history",
    "make_private",
    "noise_multiplier_for_budget",
    "privacy_report",
    "restore_accountant",
    "with_per_example_positions",
]


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
    fix_incompatible: bool = False
    """Let Opacus swap unsupported layers (BatchNorm -> GroupNorm, ...) instead of failing."""

    @model_validator(mode="after")
    def _one_mode(self) -> PrivacyOptions:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of target_epsilon (target mode) or noise_multiplier (fixed-noise mode)")
        if self.target_epsilon is not None and self.target_epsilon <= 0:
            raise ValueError("target_epsilon must be > 0")
        if self.noise_multiplier is not None and self.noise_multiplier < 0:
            raise ValueError("noise_multiplier must be >= 0")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError("delta must be in (0, 1)")
        return self

    @property
    def mode(self) -> str:
        """'target-epsilon' or 'fixed-noise'."""
        return "target-epsilon" if self.target_epsilon is not None else "fixed-noise"


@dataclass
class DPSession:
    """The private training objects plus what the report needs."""

    model: Any
    """``GradSampleModule`` wrapping the user's model (``.unwrapped`` is the original)."""
    optimizer: Any
    data_loader: Any
    engine: Any
    options: PrivacyOptions
    delta: float
    noise_multiplier: float
    sample_rate: float

    @property
    def unwrapped(self) -> Any:
        """The user's module, without the Opacus wrapper (for saving weights)."""
        return self.model._module


def check_dp_compatible(model: Any, fix: bool = False) -> Any:
    """Return ``model`` (fixed by Opacus if ``fix``) or raise a one-line ShoestringError.

    Opacus clips each example's gradient, so layers that mix examples inside a batch
    (BatchNorm) or that it cannot compute per-example gradients for are refused up front.
    """
    from opacus.validators import ModuleValidator

    if fix:
        model = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        shown = "; ".join(str(e).strip().splitlines()[0] for e in errors[:3])
        more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ShoestringError(
            f"model is not compatible with DP-SGD: {shown}{more}; replace those layers "
            "(e.g. BatchNorm -> GroupNorm/LayerNorm) or set privacy.fix_incompatible: true"
        )
    return model


def _default_delta(n: int) -> float:
    # delta well below 1/n: the usual rule so a single record is unlikely to leak outright.
    return 1.0 / (10.0 * max(n, 1))


def make_private(model: Any, optimizer: Any, data_loader: Any, options: PrivacyOptions, epochs: int) -> DPSession:
    """Wrap model/optimizer/loader with Opacus in the mode the options select.

    ``epochs`` is the number of passes planned; in target-epsilon mode the noise is chosen
    so that exactly this many passes spend ``target_epsilon``.
    """
    import warnings

    from opacus import PrivacyEngine

    check_dp_compatible(model, fix=False)
    n = len(data_loader.dataset)
    delta = options.delta if options.delta is not None else _default_delta(n)
    engine = PrivacyEngine(accountant=options.accountant)
    with warnings.catch_warnings():
        # Opacus warns about secure RNG on every call; we document the choice instead.
        warnings.filterwarnings("ignore", message=".*[Ss]ecure.*")
        warnings.filterwarnings("ignore", message=".*Optimal order.*")
        if options.target_epsilon is not None:
            model, optimizer, data_loader = engine.make_private_with_epsilon(
                module=model,
                optimizer=optimizer,
                data_loader=data_loader,
                target_epsilon=options.target_epsilon,
                target_delta=delta,
                epochs=max(1, epochs),
                max_grad_norm=options.max_grad_norm,
                poisson_sampling=options.poisson_sampling,
            )
        else:
            model, optimizer, data_loader = engine.make_private(
                module=model,
                optimizer=optimizer,
                data_loader=data_loader,
                noise_multiplier=float(options.noise_multiplier or 0.0),
                max_grad_norm=options.max_grad_norm,
                poisson_sampling=options.poisson_sampling,
            )
    sample_rate = 1.0 / max(len(data_loader), 1)
    return DPSession(
        model, optimizer, data_loader, engine, options, delta, float(optimizer.noise_multiplier), sample_rate
    )


def epsilon_spent(session: DPSession) -> float:
    """Epsilon spent so far at the session's delta (inf with zero noise, 0 before any step)."""
    if session.noise_multiplier == 0:
        return float("inf") if accountant_history(session) else 0.0
    if not accountant_history(session):
        return 0.0
    return float(session.engine.accountant.get_epsilon(delta=session.delta))


def privacy_report(session: DPSession) -> dict[str, Any]:
    """Stats for the manifest: epsilon_spent, delta, noise_multiplier, accountant, mode, ..."""
    steps = sum(int(s) for _, _, s in accountant_history(session))
    return {
        "mode": session.options.mode,
        "epsilon_spent": epsilon_spent(session),
        "target_epsilon": session.options.target_epsilon,
        "delta": session.delta,
        "noise_multiplier": session.noise_multiplier,
        "max_grad_norm": session.options.max_grad_norm,
        "accountant": session.engine.accountant.mechanism(),
        "sample_rate": session.sample_rate,
        "steps": steps,
        "poisson_sampling": session.options.poisson_sampling,
    }


def accountant_history(session: DPSession) -> list[tuple[float, float, int]]:
    """The accountant's (noise_multiplier, sample_rate, steps) records, JSON-safe for checkpoints."""
    return [(float(a), float(b), int(c)) for a, b, c in getattr(session.engine.accountant, "history", [])]


def restore_accountant(session: DPSession, history: list[Any]) -> None:
    """Put checkpointed accountant records back so a resumed run keeps counting epsilon."""
    session.engine.accountant.history = [(float(a), float(b), int(c)) for a, b, c in history]


def with_per_example_positions(inputs: dict[str, Any]) -> dict[str, Any]:
    """Add ``(B, T)`` ``position_ids`` / ``token_type_ids`` to a Hugging Face batch for DP-SGD.

    HF encoders default to a shared ``(1, T)`` position row; Opacus then sees a batch of one
    for the position embedding and cannot form per-example gradients (its error reads
    "stack expects each tensor to be equal size"). Passing explicit per-example ids avoids it.
    """
    import torch

    ids = inputs["input_ids"]  # (B, T)
    out = dict(inputs)
    if out.get("position_ids") is None:
        out["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    if out.get("token_type_ids") is None:
        out["token_type_ids"] = torch.zeros_like(ids)
    return out


def noise_multiplier_for_budget(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                                accountant: str = "prv") -> float:  # fmt: skip
    """Gaussian noise multiplier with which ``steps`` DP-SGD steps at ``sample_rate`` spend
    ``target_epsilon`` at ``delta`` (Opacus's search over its accountant). Federated clients
    use it to fix their noise once for every local step they may take over all rounds."""
    import warnings

    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Optimal order.*")
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=max(1, steps), accountant=accountant))  # fmt: skip


def epsilon_for_history(history: list[tuple[float, float, int]], delta: float, accountant: str = "prv") -> float:
    """Epsilon at ``delta`` of a sequence of DP-SGD runs, each (noise multiplier, sample rate,
    steps), composed by an Opacus accountant (inf when any run had no noise, 0 for none)."""
    import warnings

    from opacus.accountants import create_accountant

    runs = [(float(a), float(b), int(c)) for a, b, c in history if int(c) > 0]
    if not runs:
        return 0.0
    if any(a == 0 for a, _, _ in runs):
        return float("inf")
    acc = create_accountant(mechanism=accountant)
    acc.history = runs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Optimal order.*")
        return float(acc.get_epsilon(delta=delta))
