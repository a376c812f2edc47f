"""The Transformer baseline: exactly Llama (same parameter names, shapes and numerics)."""

from torch import nn

from yoco.cache import GrowingKV, TransformerCache
from yoco.layers.block import DecoderLayer
from yoco.layers.differential_attention import kv_cache_shape
from yoco.layers.parts import make_mlp, make_self_attention
from yoco.models.base import CausalLM, DecoderBackbone, DecoderConfig, last_positions


class TransformerConfig(DecoderConfig):
    model_type = "yoco_transformer"


class TransformerModel(DecoderBackbone):
    """L layers of (causal GQA attention, SwiGLU), each with its own K/V."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config)
        self.config = config
        self.layers = nn.ModuleList(
            DecoderLayer(
                make_self_attention(config, i), make_mlp(config), config.hidden_size, config.rms_norm_eps
            )
            for i in range(config.num_hidden_layers)
        )

    def body(self, x, rope, cache: TransformerCache | None = None, keep_last: int | None = None):
        for i, layer in enumerate(self.layers):
            x = layer(x, rope=rope, cache=None if cache is None else cache.kv[i])
        return last_positions(x, keep_last)

    def new_cache(
        self, batch_size: int, capacity: int, dtype, device, kv_cache_dtype: str
    ) -> TransformerCache:
        kv_heads, kv_dim = kv_cache_shape(self.config)  # differential attention packs K/V in pairs
        return TransformerCache(
            [
                GrowingKV(batch_size, kv_heads, kv_dim, dtype, device, capacity, kv_cache_dtype)
                for _ in self.layers
            ],
            dtype,
        )


class TransformerForCausalLM(CausalLM):
    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__(config, TransformerModel(config))
