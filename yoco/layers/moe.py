"""Sparse mixture-of-experts feed-forward networks: top-k MoE and multi-head MoE (MH-MoE).

``MoE``: a linear router scores the E experts, a softmax turns the scores into probabilities,
each token goes to its k most probable experts and their outputs are mixed with the k
probabilities renormalised to sum to 1 (Mixtral's routing). Experts are the library's SwiGLU.
There is no expert capacity and no token dropping: every token is routed on its own, so a
token's output depends on that token only, and cached decoding equals the full forward.

``MHMoE`` (Wu et al. 2024; sizing of Huang et al. 2024, "MH-MoE v2"): a head projection, each
token split into h sub-tokens of width d/h, every sub-token routed by a ``MoE`` over width d/h,
the sub-tokens concatenated again, a merge projection. Expert width and count follow the v2
parity sizing, see :func:`mhmoe_intermediate_size`.

Load balancing (Switch Transformer / GShard): with f_e the fraction of the T·k routing slots
that went to expert e and P_e the mean router probability of e over the T tokens,
``aux = E · Σ_e f_e · P_e``; 1.0 when routing is uniform, E when everything goes to one expert.
Each ``MoE`` keeps the ``aux_loss`` and the per-expert ``expert_counts`` of its last forward;
:func:`moe_aux_loss` sums the former over a model (``CausalLM`` returns it unscaled as the
output's ``aux_loss``, beside the cross-entropy ``loss``; the trainer adds
``router_aux_loss_coef`` times it to its objective), :func:`expert_statistics` summarises the
latter for training logs.
"""

import torch
from torch import nn

from yoco.layers.linear import Linear
from yoco.layers.mlp import SwiGLU


class MoE(nn.Module):
    """Top-k routed SwiGLU experts over the last dimension of any (..., hidden) input."""

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.router = Linear(hidden_size, num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(hidden_size, intermediate_size) for _ in range(num_experts))
        # Statistics of the last forward (not parameters or buffers: never saved, never synced).
        self.aux_loss: torch.Tensor | None = None
        self.expert_counts: torch.Tensor | None = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (T, hidden) -> router probabilities (T, E), top-k weights (T, k), indices (T, k)."""
        # fp32 softmax: under bf16 autocast the router logits are bf16, and near-ties between
        # experts would otherwise flip with rounding.
        probs = self.router(x).float().softmax(dim=-1)
        weights, indices = probs.topk(self.top_k, dim=-1)
        return probs, weights / weights.sum(dim=-1, keepdim=True), indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        probs, weights, indices = self.route(tokens)
        out = torch.zeros_like(tokens)
        # Dispatch: each expert runs on the tokens that chose it, and its weighted output is
        # added back at their rows. An expert nobody chose still runs on an empty batch, so
        # every expert is in the autograd graph (zero gradient) and DDP never waits for it.
        for e, expert in enumerate(self.experts):
            token, slot = (indices == e).nonzero(as_tuple=True)
            y = expert(tokens.index_select(0, token)) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        self._record(probs, indices)
        return out.reshape(x.shape)

    def _record(self, probs: torch.Tensor, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices.flatten(), minlength=self.num_experts)
        fraction = counts.float() / indices.numel()  # f_e: not differentiable, as in Switch
        self.aux_loss = self.num_experts * (fraction * probs.mean(dim=0)).sum()
        self.expert_counts = counts.detach()


def mhmoe_intermediate_size(
    hidden_size: int, intermediate_size: int, top_k: int, matrices_per_expert: int = 3
) -> int:
    """Expert width of an MH-MoE with the FLOPs of a top-k MoE of expert width ``intermediate_size``.

    MH-MoE v2 (Huang et al. 2024) keeps FLOPs by giving the head and merge projections' 2·d²
    multiply-adds per token back from the experts: a token's h sub-tokens (width d/h) each
    meet k experts of width d', costing k·m·d·d' in total for experts of m weight matrices,
    against k·m·d·d_moe for the MoE. Parity, k·m·d·d' + 2·d² = k·m·d·d_moe, gives

        d' = d_moe − 2·d / (m·k),

    which is the paper's ``d_mhmoe = d_moe − d/k`` for its two-matrix FFN experts (m = 2). Our
    experts are SwiGLU (m = 3: gate, up, down), so the same balance gives d_moe − 2d/(3k),
    rounded to the nearest integer. Routers are left out, as in the paper (both hold d·E
    weights; MH-MoE's costs d·h·E multiply-adds per token against the MoE's d·E).
    """
    width = round(intermediate_size - 2 * hidden_size / (matrices_per_expert * top_k))
    if width < 1:
        raise ValueError(
            f"MH-MoE parity leaves no expert width: intermediate_size {intermediate_size} - "
            f"2*hidden_size/({matrices_per_expert}*top_k) = {width}; raise intermediate_size"
        )
    return width


class MHMoE(nn.Module):
    """``merge(MoE(split_h(head(x))))`` with h·E experts of width d/h -> d' -> d/h.

    Against ``MoE(d, d_moe, E, k)`` of the same config: per token, k experts for each of the h
    sub-tokens plus the two projections cost exactly the MoE's FLOPs (up to rounding d', see
    :func:`mhmoe_intermediate_size`). Splitting tokens h ways makes each expert h times smaller,
    so the expert count is multiplied by h (the v2 paper adjusts both width and count) for
    parameter parity: h·E·3·(d/h)·d' + 2·d² = 3·E·d·d_moe − 2·d²·(E/k − 1), i.e. MH-MoE has
    2·d²·(E/k − 1) fewer weights than the MoE: a fraction 2d(E/k − 1)/(3E·d_moe) < 2d/(3k·d_moe)
    of it, 0 when k = E, 9% for the default config (d=512, d_moe=1376, E=8, k=2).
    """

    def __init__(
        self, hidden_size: int, intermediate_size: int, num_experts: int, top_k: int, heads: int
    ) -> None:
        super().__init__()
        if hidden_size % heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by mhmoe_heads ({heads})")
        self.heads = heads
        self.head_proj = Linear(hidden_size, hidden_size, bias=False)
        self.moe = MoE(
            hidden_size // heads,
            mhmoe_intermediate_size(hidden_size, intermediate_size, top_k),
            num_experts * heads,
            top_k,
        )
        self.merge_proj = Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., d) -> (..., h, d/h): the sub-tokens of one position are routed independently,
        # never mixed with other positions.
        sub_tokens = self.head_proj(x).unflatten(-1, (self.heads, -1))
        return self.merge_proj(self.moe(sub_tokens).flatten(-2))


def moe_layers(model: nn.Module) -> list[MoE]:
    """The model's routed layers in module order (an MH-MoE contributes its inner MoE)."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the load-balancing losses of the last forward over all MoE layers (None if none)."""
    losses = [m.aux_loss for m in moe_layers(model) if m.aux_loss is not None]
    return torch.stack(losses).sum() if losses else None


def expert_statistics(model: nn.Module) -> dict[str, float]:
    """Expert activation of the last forward, for training logs ({} for a model without MoE).

    Per layer ``moe_imbalance/<i>``: max / mean of the expert counts (1.0 is perfectly even,
    E means one expert took everything) and ``moe_unused/<i>``: the fraction of experts that got
    no token; over all layers their maximum, and ``moe_aux_loss``, the unscaled balancing loss.
    """
    layers = [m for m in moe_layers(model) if m.expert_counts is not None]
    if not layers:
        return {}
    stats = {}
    for i, layer in enumerate(layers):
        counts = layer.expert_counts.float()
        stats[f"moe_imbalance/{i}"] = float(counts.max() / counts.mean())
        stats[f"moe_unused/{i}"] = float((counts == 0).float().mean())
    stats["moe_imbalance_max"] = max(stats[f"moe_imbalance/{i}"] for i in range(len(layers)))
    stats["moe_unused_max"] = max(stats[f"moe_unused/{i}"] for i in range(len(layers)))
    stats["moe_aux_loss"] = float(moe_aux_loss(model).detach())
    return stats
