"""`MoETransformerBlock`: pre-norm attention and MoE feed-forward with residuals."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from wattmoe.errors import ShapeError
from wattmoe.moe.base import MoEConfig, resolve_dtype, seeded
from wattmoe.moe.layer import MoEOutput, SimpleMoELayer, check_input_dtype
from wattmoe.moe.router import RoutingStrategy


class Attention(nn.Module):
    """Multi-head (grouped-query) self-attention through `scaled_dot_product_attention`."""

    def __init__(self, config: MoEConfig, dtype: torch.dtype, device=None) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.kv_heads = config.kv_heads
        self.head_dim = config.hidden_size // config.num_heads
        kw = {"bias": False, "dtype": dtype, "device": device}
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, **kw)
        self.k_proj = nn.Linear(h, self.kv_heads * self.head_dim, **kw)
        self.v_proj = nn.Linear(h, self.kv_heads * self.head_dim, **kw)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, **kw)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.kv_heads != self.num_heads:
            rep = self.num_heads // self.kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        # (the width named: -1 is ambiguous for an empty batch or sequence)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))


class MoETransformerBlock(nn.Module):
    """x + attn(norm(x)), then h + moe(norm(h)); returns the MoE layer's output record.

    `backend` is the MoE layer's expert backend (default 'auto', as `SimpleMoELayer`'s).
    """

    def __init__(
        self,
        config: MoEConfig,
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        strategy: str | RoutingStrategy = "baseline",
        backend: str = "auto",
        causal: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        dt = resolve_dtype(dtype)
        self.config = config
        self.causal = causal
        self.attn_norm = nn.RMSNorm(config.hidden_size, dtype=dt, device=device)
        self.moe_norm = nn.RMSNorm(config.hidden_size, dtype=dt, device=device)
        self.moe = SimpleMoELayer(config, dt, device, strategy, backend, seed)
        # the attention's seed is the next one, modulo 2**64 as torch takes seeds (2**64 - 1,
        # a valid seed, made 2**64, which torch refuses)
        with seeded(None if seed is None else (int(seed) + 1) % (1 << 64)):
            self.attn = Attention(config, dt, device)

    def forward(self, x: torch.Tensor) -> MoEOutput:
        """x: [batch, seq, H]."""
        if x.dim() != 3 or x.shape[-1] != self.config.hidden_size:
            raise ShapeError(
                f"transformer block expects [batch, seq, {self.config.hidden_size}], "
                f"got {tuple(x.shape)}"
            )
        check_input_dtype("transformer block", x, self.attn_norm.weight.dtype)
        h = x + self.attn(self.attn_norm(x), self.causal)
        moe_out = self.moe(self.moe_norm(h))
        return dataclasses.replace(moe_out, hidden_states=h + moe_out.hidden_states)
