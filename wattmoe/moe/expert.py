"""The feed-forward expert: Linear-ReLU-Linear or SwiGLU, in any floating dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wattmoe.errors import ConfigError, ShapeError
from wattmoe.moe.base import EXPERT_FORMS, ExpertForm, resolve_dtype


class FeedForward(nn.Module):
    """What every expert form shares: `gate_proj` (or None), `up_proj`, `down_proj` callables
    and the forward pass over them. Subclasses decide how the weights are stored."""

    hidden_size: int
    gate_proj: nn.Module | None
    up_proj: nn.Module
    down_proj: nn.Module

    def check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.hidden_size:
            raise ShapeError(
                f"expert expects inputs [..., {self.hidden_size}], got {tuple(x.shape)}"
            )

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        """The inner activation [..., F] (up/gate projection and nonlinearity)."""
        if self.gate_proj is not None:
            return F.silu(self.gate_proj(x)) * self.up_proj(x)
        return F.relu(self.up_proj(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.down_proj(self.activation(x))


class Expert(FeedForward):
    """One feed-forward expert.

    'swiglu': down(silu(gate(x)) * up(x)) as in Mixtral, DeepSeek, Qwen and OLMoE.
    'relu':   down(relu(up(x))) as in the Switch Transformer.

    Weights follow `nn.Linear`: `up_proj.weight` is [F, H], `down_proj.weight` is [H, F].
    """

    def __init__(
        self,
        hidden_size: int,
        inner_size: int,
        form: ExpertForm = "swiglu",
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        if form not in EXPERT_FORMS:
            raise ConfigError(f"expert form must be one of {EXPERT_FORMS}, got {form!r}")
        if hidden_size <= 0 or inner_size <= 0:
            raise ConfigError(
                f"expert sizes must be positive, got hidden={hidden_size}, inner={inner_size}"
            )
        kw = {"dtype": resolve_dtype(dtype), "device": device, "bias": False}
        self.hidden_size = hidden_size
        self.inner_size = inner_size
        self.form: ExpertForm = form
        self.gate_proj = nn.Linear(hidden_size, inner_size, **kw) if form == "swiglu" else None
        self.up_proj = nn.Linear(hidden_size, inner_size, **kw)
        self.down_proj = nn.Linear(inner_size, hidden_size, **kw)

    @property
    def dtype(self) -> torch.dtype:
        return self.up_proj.weight.dtype

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"hidden={self.hidden_size}, inner={self.inner_size}, form={self.form}"
