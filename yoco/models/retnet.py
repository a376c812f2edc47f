"""RetNet (Sun et al. 2023): every block's mixer is multi-scale retention.

A decoder-only model with constant-size inference state and no K/V cache at all; also the
"every layer is the self-decoder mixer" baseline for YOCO with ``self_decoder="retention"``.
"""

from huggingface_hub.dataclasses import strict
from torch import nn

from yoco.cache import RecurrentCache, RecurrentState
from yoco.layers.block import DecoderLayer
from yoco.layers.parts import make_mlp
from yoco.layers.retention import MultiScaleRetention
from yoco.models.base import CausalLM, DecoderBackbone, DecoderConfig, last_positions


@strict
class RetNetConfig(DecoderConfig):
    model_type = "yoco_retnet"

    retention_chunk_size: int = 64

    def check(self) -> None:
        super().check()
        if self.retention_chunk_size < 1:
            raise ValueError(f"retention_chunk_size must be >= 1, got {self.retention_chunk_size}")


class RetNetModel(DecoderBackbone):
    def __init__(self, config: RetNetConfig) -> None:
        super().__init__(config)
        self.config = config
        self.layers = nn.ModuleList(
            DecoderLayer(
                MultiScaleRetention(
                    config.hidden_size,
                    config.num_attention_heads,
                    eps=config.rms_norm_eps,
                    chunk_size=config.retention_chunk_size,
                ),
                make_mlp(config),
                config.hidden_size,
                config.rms_norm_eps,
                mixer_name="retention",
            )
            for _ in range(config.num_hidden_layers)
        )

    def body(self, x, rope, cache: RecurrentCache | None = None, keep_last: int | None = None):
        for i, layer in enumerate(self.layers):
            x = layer(x, rope=rope, cache=None if cache is None else cache.states[i])
        return last_positions(x, keep_last)

    def new_cache(self, batch_size: int, capacity: int, dtype, device, kv_cache_dtype: str) -> RecurrentCache:
        # Only recurrent states, always float32: there are no keys or values to quantize.
        config = self.config
        states = [
            RecurrentState(batch_size, config.num_attention_heads, config.head_dim, device)
            for _ in self.layers
        ]
        return RecurrentCache(states, dtype)


class RetNetForCausalLM(CausalLM):
    config_class = RetNetConfig

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__(config, RetNetModel(config))
