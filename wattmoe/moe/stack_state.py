"""State dicts of stacked experts: a view of the stack saved as its own bytes, or as a view.

`stacked.py` makes each expert's weights (dense) or packed codes and scales (int4) views of
the stack's [E, ...] tensors, and ``torch.save`` writes a view's whole storage. Left alone,
the state dict of one expert, or of one of its linears, would hold every expert's weights:
on OLMoE at 1/16 scale (64 experts), one fp32 expert's state dict saved 6,293,477 bytes for
its 98,304 bytes of weights, one int4 expert's 887,261 for 13,824.

So a stacked module's state dict holds its own copy of each such view, unless the state
dict is taken of the container that holds the stack (the layer's `experts` list) or of a
module that holds it (the layer, a model): those keep the views, one storage written once,
and add no memory (a copy of a DeepSeek-V3 int4 stack would be 6 GB more on its GPU).
The container marks the stretch of its own `state_dict` call (torch's `state_dict` calls
each child's `state_dict`, so that stretch covers every expert under it) with a state dict
pre-hook and post-hook; the stacked linears look at the mark in a post-hook. With
``keep_vars=True`` the tensors themselves are given, never copies; loading copies in place
either way, so the views stay the stack's.

The hooks are registered where the views are made (`stacked._build`, and
`stacked.quantize_experts` for codes quantized into a stack), once per module; they
are module-level functions, so modules with them still pickle and deep-copy.
"""

from __future__ import annotations

import itertools
import threading
import weakref

import torch
from torch import nn

# The prefix of the stack container whose state dict is being taken, per thread; None
# outside one. A state dict that raises in between leaves it set until the next one of a
# container; `_under` keeps a later, smaller state dict from taking it for its own.
_WHOLE = threading.local()


def _enter_whole_stack(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    _WHOLE.prefix = prefix
    _WHOLE.container = weakref.ref(module)


def _leave_whole_stack(module: nn.Module, state_dict: dict, prefix: str,
                       local_metadata: dict) -> None:
    _WHOLE.prefix = None
    _WHOLE.container = None


def _own_bytes(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """Replaces the module's saved tensors that are views of a larger storage by copies,
    unless the whole stack's state dict is being taken (its container's, under `prefix`)."""
    whole = getattr(_WHOLE, "prefix", None)
    if whole is not None and prefix.startswith(whole) and _under(module, whole, prefix):
        return
    for name, t in itertools.chain(module._parameters.items(), module._buffers.items()):
        saved = state_dict.get(prefix + name)
        # keep_vars=True saved t itself; a tensor subclass (DTensor, ...) is left as it is
        if saved is None or saved is t or type(saved) is not torch.Tensor:
            continue
        if saved.untyped_storage().nbytes() > saved.numel() * saved.element_size():
            state_dict[prefix + name] = saved.clone()


def _under(module: nn.Module, whole: str, prefix: str) -> bool:
    """Whether `module` (a stacked linear saved at `prefix`) is one of the experts' linears of
    the container whose state dict set the mark (`whole`): at `whole` + '<i>.<name>.', that
    container's child <i>'s child <name>. A mark left by a container's state dict that raised
    is then not taken for one of a later, smaller state dict (one expert's saves its linears
    at '<name>.')."""
    ref = getattr(_WHOLE, "container", None)
    container = ref() if ref is not None else None
    rest = prefix[len(whole):].split(".")
    if container is None or len(rest) != 3:
        return False
    expert = container._modules.get(rest[0])
    return expert is not None and expert._modules.get(rest[1]) is module


def _hook_once(hooks: dict, register: object, hook: object) -> None:
    if hook not in hooks.values():
        register(hook)  # type: ignore[operator]


def save_views_whole(container: nn.Module) -> None:
    """State dicts of `container` (and of the modules holding it) keep the stacked views of
    the experts in it: it holds the whole stack."""
    _hook_once(container._state_dict_pre_hooks, container.register_state_dict_pre_hook,
               _enter_whole_stack)
    _hook_once(container._state_dict_hooks, container.register_state_dict_post_hook,
               _leave_whole_stack)


def save_own_bytes(module: nn.Module) -> None:
    """State dicts of `module`, whose tensors are views of a stack, hold copies of just
    their bytes unless they are taken of the whole stack (`save_views_whole`)."""
    _hook_once(module._state_dict_hooks, module.register_state_dict_post_hook, _own_bytes)
