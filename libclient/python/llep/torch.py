"""The experts of transformers' MoE blocks, computed in llepd.

transformers 5 keeps each MoE block's experts in one module (``block.experts``: MixtralExperts,
Qwen3MoeExperts, GptOssExperts, ...) with all experts' weights in 3-D tensors, called by the
block as ``experts(hidden_states, top_k_index, top_k_weights)`` after its router. :class:`LlepExperts`
is a module with that same call that runs a llep layer instead, so the router (and everything
else) stays in torch; :func:`patch` swaps the experts of every MoE block of a model for llep
layers made from the model's own weights, handed to libllep-client in the layout they have in
memory (no transposed or de-interleaved copy is made in Python).

Inference only: llepd computes no gradients, and the outputs carry none.
"""
from __future__ import annotations

import secrets
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .client import Client, Layer

__all__ = ["LlepExperts", "experts_layout", "patch"]

# The activations llep computes (DESIGN.md section 4), by transformers' hidden_act names.
_SWIGLU_ACTS = ("silu", "swish")


def _is_experts(module: nn.Module) -> bool:
    """Whether a module is a transformers experts collection: 3-D gate_up_proj and down_proj."""
    gu = getattr(module, "gate_up_proj", None)
    dn = getattr(module, "down_proj", None)
    return (isinstance(gu, torch.Tensor) and isinstance(dn, torch.Tensor) and gu.dim() == 3
            and dn.dim() == 3)


def _activation(experts: nn.Module) -> Tuple[str, float, float]:
    """llep's activation for an experts module: its gate function and hidden_act."""
    cls = type(experts)
    try:
        from transformers.integrations.moe import _default_apply_gate
    except ImportError:  # an experts module of some other origin: judge by its act_fn only
        _default_apply_gate = None
    own_gate = getattr(cls, "_apply_gate", None)
    if own_gate is not None and own_gate is not _default_apply_gate:
        # gpt-oss: gate clamped above at limit, up to [-limit, limit],
        # (up + 1) * gate * sigmoid(alpha * gate): llep's SWIGLU_OAI.
        if cls.__name__ == "GptOssExperts":
            return "swiglu_oai", float(experts.alpha), float(experts.limit)
        raise ValueError(f"{cls.__name__}: its gate function {own_gate.__qualname__} is not "
                         "one of llep's activations (SwiGLU, gpt-oss's clamped SwiGLU)")
    config = getattr(experts, "config", None)
    act = getattr(config, "hidden_act", None)
    if act in _SWIGLU_ACTS or isinstance(getattr(experts, "act_fn", None), nn.SiLU):
        return "swiglu", 0.0, 0.0
    raise ValueError(f"{cls.__name__}: activation {act!r} is not one of llep's (SwiGLU with "
                     "silu, gpt-oss's clamped SwiGLU)")


def experts_layout(experts: nn.Module) -> Dict[str, Any]:
    """The arguments of :meth:`llep.Client.create_layer` that describe an experts module's
    weights as they lie in memory: the tensors themselves, their layouts and the activation.

    transformers' ``use_experts_implementation`` records the layout on the module:
    ``is_transposed`` False is ``gate_up_proj`` [N, 2H, D] and ``down_proj`` [N, D, H] applied
    as ``F.linear`` (llep's "fused_t" and "dh"); True is [N, D, 2H] and [N, H, D] applied as
    ``x @ W`` ("fused", or "interleaved" when ``is_concatenated`` is False, and "hd").
    """
    name = type(experts).__name__
    if not _is_experts(experts):
        raise ValueError(f"{name} is not an experts module (3-D gate_up_proj and down_proj)")
    if not getattr(experts, "has_gate", True):
        raise ValueError(f"{name}: experts without a gate projection are not llep's FFN")
    if getattr(experts, "has_post_expert_norm", False):
        raise ValueError(f"{name}: a norm after each expert is not llep's FFN")
    transposed = bool(getattr(experts, "is_transposed", False))
    concatenated = bool(getattr(experts, "is_concatenated", True))
    if not transposed and not concatenated:
        raise ValueError(f"{name}: interleaved gate/up rows applied as x W^T have no llep "
                         "layout")
    if transposed:
        gate_up_layout = "fused" if concatenated else "interleaved"
    else:
        gate_up_layout = "fused_t"
    act, act_alpha, act_limit = _activation(experts)
    args: Dict[str, Any] = {
        "w_gate_up": experts.gate_up_proj.detach(),
        "w_down": experts.down_proj.detach(),
        "gate_up_layout": gate_up_layout,
        "down_layout": "hd" if transposed else "dh",
        "act": act, "act_alpha": act_alpha, "act_limit": act_limit,
    }
    if getattr(experts, "has_bias", False):
        args["b_gate_up"] = experts.gate_up_proj_bias.detach()
        args["b_down"] = experts.down_proj_bias.detach()
    return args


def _top_k(experts: nn.Module, block: Optional[nn.Module]) -> int:
    for owner in (block, getattr(block, "gate", None), getattr(block, "router", None)):
        k = getattr(owner, "top_k", None)
        if isinstance(k, int):
            return k
    config = getattr(experts, "config", None)
    k = getattr(config, "num_experts_per_tok", None)
    if isinstance(k, int):
        return k
    raise ValueError(f"{type(experts).__name__}: cannot tell top_k; pass it")


class LlepExperts(nn.Module):
    """A transformers experts module whose computation is a llep layer.

    ``forward(hidden_states, top_k_index, top_k_weights)`` takes what a transformers MoE block
    passes its experts (``[T, D]``, ``[T, K]`` ids of any integer type torch.topk gives,
    ``[T, K]`` weights) and returns ``[T, D]`` in hidden_states' dtype, float32 or bfloat16.
    """

    def __init__(self, layer: Layer, *, release: bool = True):
        super().__init__()
        self.layer = layer
        self.num_experts = layer.num_experts
        self.top_k = layer.top_k
        self.hidden_dim = layer.hidden
        self.intermediate_dim = layer.inter
        self._release = release

    @classmethod
    def from_experts(cls, experts: nn.Module, client: Client, name: str, *,
                     top_k: Optional[int] = None, block: Optional[nn.Module] = None,
                     **policy: Any) -> "LlepExperts":
        """Creates the llep layer ``name`` from an experts module's own weights (float32 or
        bfloat16, on the CPU); policy arguments go to :meth:`llep.Client.create_layer`."""
        args = experts_layout(experts)
        for key in ("w_gate_up", "w_down", "b_gate_up", "b_down"):
            t = args.get(key)
            if t is not None and t.device.type != "cpu":
                raise ValueError(f"{name}: {key} is on {t.device}; llep reads CPU tensors")
        k = top_k if top_k is not None else _top_k(experts, block)
        layer = client.create_layer(name, top_k=k, **args, **policy)
        return cls(layer)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        x = hidden_states
        if x.dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"llep computes float32 or bfloat16 hidden states, not {x.dtype}")
        if top_k_index.dtype not in (torch.int32, torch.int64):
            top_k_index = top_k_index.to(torch.int64)
        if top_k_weights.dtype not in (torch.float32, torch.bfloat16):
            top_k_weights = top_k_weights.to(torch.float32)
        return self.layer.forward(x.detach(), top_k_index.detach(), top_k_weights.detach())

    def extra_repr(self) -> str:
        d = self.layer.desc
        return (f"llep layer {self.layer.name!r}: N={d.num_experts}, K={d.top_k}, "
                f"D={d.hidden}, H={d.inter}, {d.dtype.name.lower()}, {d.act.name.lower()}")

    def close(self) -> None:
        """Releases the llep layer."""
        if self._release:
            self.layer.close()


def patch(model: nn.Module, client: Client, *, prefix: Optional[str] = None,
          **policy: Any) -> List[LlepExperts]:
    """Swaps the experts of every MoE block of ``model`` for llep layers in ``client``'s llepd,
    made from the model's own weights, and returns the new modules in model order.

    A MoE block is any module with an experts child (3-D ``gate_up_proj`` and ``down_proj``:
    transformers 5 Mixtral, Qwen2/3-MoE, gpt-oss, ...). Its router and everything else stay in
    torch. The experts of the i-th MoE block in model order become the layer ``PREFIX/i``, as
    the layers of a model llepd loads are named (PREFIX by default the model type and a random
    suffix, so that two processes do not clash).
    ``policy`` goes to :meth:`llep.Client.create_layer` (policy, alpha, lambda_, min_tokens,
    group, ...; keep_weights=True with a ``reconnect=True`` client to ride out restarts of
    llepd). The original experts modules are dropped from the model, so their weights are
    freed unless referenced elsewhere. Raises ValueError for a model without MoE blocks or with
    experts llep cannot compute (the model is then left as it was).
    """
    if prefix is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None) or "model"
        prefix = f"{model_type}-{secrets.token_hex(4)}"
    found: List[Tuple[nn.Module, str, nn.Module]] = []
    for module in model.modules():
        for child_name, child in module.named_children():
            if _is_experts(child) and not isinstance(child, LlepExperts):
                found.append((module, child_name, child))
    if not found:
        raise ValueError(f"{type(model).__name__} has no MoE blocks with experts llep can "
                         "compute")
    for _, _, child in found:           # everything checked before any layer is made
        experts_layout(child)
    made: List[LlepExperts] = []
    try:
        for i, (parent, _, child) in enumerate(found):
            made.append(LlepExperts.from_experts(child, client, f"{prefix}/{i}", block=parent,
                                                 **policy))
    except BaseException:
        for m in made:
            m.close()
        raise
    for (parent, child_name, _), new in zip(found, made):
        setattr(parent, child_name, new)
    return made
