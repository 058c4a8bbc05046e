"""The router: gate, top-k selection, combine weights, Switch load-balancing loss.

`AdaptiveRouter` holds the gate and one `RoutingStrategy` from a registry. A strategy can add
a bias to the logits used to *select* experts (energy-aware strategies push tokens toward
cheaper experts this way); combine weights always come from the unbiased scores, as in
DeepSeek-V3's bias-based balancing, so a strategy changes which experts run, not how their
outputs are mixed. `baseline` adds nothing: gate logits and aux loss only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from wattmoe.checks import check_positive_int
from wattmoe.errors import ConfigError, ShapeError
from wattmoe.moe.base import SCORE_FUNCS, ScoreFunc, resolve_dtype
from wattmoe.moe.dispatch import count_experts


@dataclass
class RouterOutput:
    """What the router decided for T tokens.

    Attributes:
        logits: [T, E] float32 gate logits.
        probs: [T, E] float32 normalized scores over all experts (for the aux loss).
        topk_idx: [T, k] int64 chosen experts, best first.
        topk_weight: [T, k] float32 combine weights.
        routed_counts: [E] int64 assignments per expert before any capacity drop.
        balance_loss: scalar, E * sum_i f_i * P_i (1.0 for perfectly uniform routing).
        aux_loss: scalar, aux_loss_coef * balance_loss.
        bias: [E] or [T, E] selection bias the strategy applied, or None.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    topk_idx: torch.Tensor
    topk_weight: torch.Tensor
    routed_counts: torch.Tensor
    balance_loss: torch.Tensor
    aux_loss: torch.Tensor
    bias: torch.Tensor | None = None


class RoutingStrategy(nn.Module):
    """How a router biases expert selection. Subclasses register with `register_strategy`.

    A strategy is an `nn.Module` so that adaptive ones can hold parameters and state.
    """

    name: ClassVar[str] = ""

    def selection_bias(self, logits: torch.Tensor) -> torch.Tensor | None:
        """Additive bias on the [T, E] logits used for top-k selection; None for none."""
        return None

    def observe(self, output: RouterOutput) -> None:
        """Called after each routing decision (for strategies that learn from traffic)."""


ROUTING_STRATEGIES: dict[str, type[RoutingStrategy]] = {}


def register_strategy(name: str) -> Callable[[type[RoutingStrategy]], type[RoutingStrategy]]:
    """Class decorator adding a strategy to `ROUTING_STRATEGIES` under `name`."""

    def deco(cls: type[RoutingStrategy]) -> type[RoutingStrategy]:
        if name in ROUTING_STRATEGIES:
            raise ConfigError(f"routing strategy {name!r} is already registered")
        cls.name = name
        ROUTING_STRATEGIES[name] = cls
        return cls

    return deco


def make_strategy(name: str, **kwargs: object) -> RoutingStrategy:
    """Instantiates a registered strategy by name.

    Raises:
        ConfigError: no strategy has that name.
    """
    try:
        cls = ROUTING_STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown routing strategy {name!r} (known: {', '.join(sorted(ROUTING_STRATEGIES))})"
        ) from None
    return cls(**kwargs)


@register_strategy("baseline")
class BaselineStrategy(RoutingStrategy):
    """Gate logits and the load-balancing aux loss only: no cost or telemetry bias."""


def switch_balance_loss(
    probs: torch.Tensor, routed_counts: torch.Tensor, top_k: int
) -> torch.Tensor:
    """Switch Transformer load-balancing loss E * sum_i f_i * P_i.

    f_i is the fraction of the T*k assignments sent to expert i, P_i the mean router
    probability of expert i over the T tokens. Uniform routing gives 1.0; all tokens on one
    expert with all probability on it gives E.
    """
    tokens, num_experts = probs.shape
    f = routed_counts.to(probs.dtype) / max(tokens * top_k, 1)
    # no tokens: 0, as the fused routing gives (the mean of no rows is NaN, and an empty
    # batch's aux loss was NaN, which made a training step's loss NaN)
    p = probs.mean(dim=0) if tokens else probs.sum(dim=0)
    return num_experts * torch.sum(f * p)


def check_selection_bias(bias: torch.Tensor | None, tokens: int, num_experts: int) -> None:
    """Checks a strategy's selection bias against the [tokens, num_experts] logits.

    Raises:
        ShapeError: the bias is not [E], [1, E] or [T, E] (fused routing takes only these;
            broadcasting anything else would fail inside torch, or, for [T, 1], add one number
            per token and change nothing).
    """
    if bias is None:
        return
    shape = tuple(bias.shape)
    if shape not in ((num_experts,), (1, num_experts), (tokens, num_experts)):
        raise ShapeError(
            f"selection bias must be [{num_experts}] or [{tokens}, {num_experts}] for {tokens} "
            f"tokens and {num_experts} experts, got {shape}"
        )


class AdaptiveRouter(nn.Module):
    """Gate + top-k router with a pluggable selection strategy.

    Args:
        hidden_size: model width H.
        num_experts: routed experts E.
        top_k: experts chosen per token.
        strategy: a registered strategy name or an instance.
        score_func: 'softmax' (Mixtral, Qwen, OLMoE) or 'sigmoid' (DeepSeek-V3).
        normalize_topk: renormalize the chosen scores to sum to one.
        aux_loss_coef: weight of the balance loss in `aux_loss`.
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        strategy: str | RoutingStrategy = "baseline",
        score_func: ScoreFunc = "softmax",
        normalize_topk: bool = True,
        aux_loss_coef: float = 0.01,
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_experts", num_experts),
                            ("top_k", top_k)):
            check_positive_int(name, value)
        if top_k > num_experts:
            raise ConfigError(f"top_k={top_k} is larger than num_experts={num_experts}")
        if score_func not in SCORE_FUNCS:  # was: anything but 'softmax' routed with sigmoid
            raise ConfigError(f"score_func must be one of {SCORE_FUNCS}, got {score_func!r}")
        self.hidden_size = hidden_size
        self.num_experts = num_experts
        self.top_k = top_k
        self.score_func = score_func
        self.normalize_topk = normalize_topk
        self.aux_loss_coef = aux_loss_coef
        self.gate = nn.Linear(hidden_size, num_experts, bias=False, dtype=resolve_dtype(dtype),
                              device=device)
        self.strategy = make_strategy(strategy) if isinstance(strategy, str) else strategy

    def set_strategy(self, strategy: str | RoutingStrategy, **kwargs: object) -> None:
        """Swaps the selection strategy (gate weights are kept)."""
        self.strategy = make_strategy(strategy, **kwargs) if isinstance(strategy, str) else strategy

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        if self.score_func == "softmax":
            return torch.softmax(logits, dim=-1)
        return torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Routes tokens x [T, H]."""
        if x.dim() != 2 or x.shape[1] != self.hidden_size:
            raise ShapeError(f"router expects [tokens, {self.hidden_size}], got {tuple(x.shape)}")
        logits = F.linear(x, self.gate.weight).float()
        scores = self.scores(logits)
        bias = self.strategy.selection_bias(logits)
        check_selection_bias(bias, x.shape[0], self.num_experts)
        select = logits if bias is None else logits + bias
        topk_idx = torch.topk(select, self.top_k, dim=-1).indices
        topk_weight = scores.gather(1, topk_idx)
        if self.normalize_topk:
            topk_weight = topk_weight / topk_weight.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        probs = scores if self.score_func == "softmax" else scores / scores.sum(-1, keepdim=True)
        routed_counts = count_experts(topk_idx, self.num_experts)
        balance = switch_balance_loss(probs, routed_counts, self.top_k)
        out = RouterOutput(
            logits=logits,
            probs=probs,
            topk_idx=topk_idx,
            topk_weight=topk_weight,
            routed_counts=routed_counts,
            balance_loss=balance,
            aux_loss=self.aux_loss_coef * balance,
            bias=bias,
        )
        self.strategy.observe(out)
        return out
