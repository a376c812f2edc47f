"""The swappable parts of a decoder block, chosen by config fields (docs/ARCHITECTURES.md).

Every model builds its blocks through these functions, so a part written once (an FFN, an
attention variant, a linear-layer kind) serves the Transformer and both YOCO decoders.
"""

from torch import nn

from yoco.layers.attention import SelfAttention
from yoco.layers.cross_attention import CrossAttention
from yoco.layers.differential_attention import DiffCrossAttention, DiffSelfAttention
from yoco.layers.mlp import SwiGLU
from yoco.layers.moe import MHMoE, MoE


def make_mlp(config) -> nn.Module:
    """The feed-forward network of one block (``config.ffn_type``)."""
    if config.ffn_type == "swiglu":
        return SwiGLU(config.hidden_size, config.intermediate_size)
    experts = (config.hidden_size, config.intermediate_size, config.num_experts, config.num_experts_per_tok)
    if config.ffn_type == "moe":
        return MoE(*experts)
    if config.ffn_type == "mhmoe":
        return MHMoE(*experts, heads=config.mhmoe_heads)
    raise ValueError(f"unknown ffn_type {config.ffn_type!r}")


def make_self_attention(config, layer_index: int, window: int | None = None) -> nn.Module:
    """Causal self-attention (full, or sliding-window with ``window``), ``config.attention_type``."""
    if config.attention_type == "softmax":
        return SelfAttention(
            config.hidden_size, config.num_attention_heads, config.num_key_value_heads, window
        )
    if config.attention_type == "differential":
        return DiffSelfAttention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            layer_index,
            config.rms_norm_eps,
            window,
        )
    raise ValueError(f"unknown attention_type {config.attention_type!r}")


def make_cross_attention(config, layer_index: int) -> nn.Module:
    """A cross-decoder layer's attention to the shared K/V, ``config.attention_type``."""
    if config.attention_type == "softmax":
        return CrossAttention(config.hidden_size, config.num_attention_heads)
    if config.attention_type == "differential":
        return DiffCrossAttention(
            config.hidden_size, config.num_attention_heads, layer_index, config.rms_norm_eps
        )
    raise ValueError(f"unknown attention_type {config.attention_type!r}")
