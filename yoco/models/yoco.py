"""YOCO: a cross-decoder stacked on a self-decoder, with one global K/V cache.

    tokens -> embedding
           -> self-decoder: num_self_decoder_layers blocks whose mixer has constant-size state
              (sliding-window attention "swa", gated retention "gret", RetNet's multi-scale
              retention "retention"), or LongNet's dilated attention "dilated" (its cache
              grows, see yoco.layers.dilated_attention)
           -> SharedKV: norm + one K/V projection (rotary on K, unless   <- the only cache that grows
              cross_decoder_positions=False: then no positions in the cross-decoder)
           -> cross-decoder: the remaining blocks, each attending causally to that one K/V
              (with cross_decoder_logn_base, queries sharpened by log-n beyond that length)
           -> norm -> LM head

The cross-decoder's input is the self-decoder's output. Embeddings are *not* scaled by
√hidden (the official code does): we keep Llama's convention so the two models differ only
in their bodies.
"""

from dataclasses import field

from huggingface_hub.dataclasses import strict
from torch import nn

from yoco.cache import ConvState, GrowingKV, RecurrentState, WindowKV, YocoCache
from yoco.layers.block import DecoderLayer
from yoco.layers.cross_attention import SharedKV
from yoco.layers.differential_attention import DiffSharedKV, kv_cache_shape
from yoco.layers.dilated_attention import DilatedAttention
from yoco.layers.gated_retention import GatedRetention
from yoco.layers.parts import make_cross_attention, make_mlp, make_self_attention
from yoco.layers.retention import MultiScaleRetention
from yoco.layers.rotary import NO_POSITIONS, LogNScaledQueries, logn_query_scale
from yoco.layers.short_conv import ShortConv
from yoco.models.base import CausalLM, DecoderBackbone, DecoderConfig, last_positions
from yoco.ops.dilated_attention import check_patterns

SELF_DECODERS = ("swa", "gret", "retention", "dilated")
RECURRENT_SELF_DECODERS = ("gret", "retention")  # constant-size state: RecurrentState


@strict
class YocoConfig(DecoderConfig):
    model_type = "yoco"

    self_decoder: str = "gret"
    sliding_window: int = 1024
    num_self_decoder_layers: int | None = None
    gret_chunk_size: int = 64
    # LongNet dilated attention (self_decoder="dilated"): one (segment, ratio) per pattern.
    dilated_segments: list[int] = field(default_factory=lambda: [64, 256, 1024])
    dilated_ratios: list[int] = field(default_factory=lambda: [1, 4, 16])
    # False: the cross-decoder's attention is position-free (NoPE): no rotary on the shared keys
    # or the cross queries, so looking a token up by content works the same at every distance,
    # including distances never seen in training. The self-decoder keeps its positions.
    cross_decoder_positions: bool = True
    # An integer B: beyond B keys, each cross-decoder query is multiplied by log(keys) / log(B)
    # (log-n scaling, yoco.layers.rotary.LogNScaledQueries), so attention stays as sharp past
    # the training length as within it. Set B to the training length: shorter contexts are
    # untouched, so it can be set on a model already trained without it. None: no scaling.
    cross_decoder_logn_base: int | None = None
    # False: no shared K/V and no cross-decoder; every layer is a self-decoder layer. These are
    # the controls of the recall ablations ("swa-only", "gret-only" in yoco.models.registry):
    # the self-decoder mixer alone, with no global cache to look anything up in.
    cross_decoder: bool = True
    # K > 0: a depthwise causal convolution of width K on each self-decoder layer's normalised
    # input, before its mixer (yoco.layers.short_conv), so every position sees its last K-1
    # predecessors directly. 0: none.
    short_conv_size: int = 0

    def __post_init__(self, **kwargs):
        if self.num_self_decoder_layers is None:
            layers = self.num_hidden_layers
            self.num_self_decoder_layers = layers // 2 if self.cross_decoder else layers
        super().__post_init__(**kwargs)

    def check(self) -> None:
        super().check()
        if self.self_decoder not in SELF_DECODERS:
            raise ValueError(f"self_decoder must be one of {SELF_DECODERS}, got {self.self_decoder!r}")
        if self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {self.sliding_window}")
        if not self.cross_decoder:
            if self.num_self_decoder_layers != self.num_hidden_layers:
                raise ValueError(
                    f"without a cross-decoder every layer is a self-decoder layer: "
                    f"num_self_decoder_layers must be {self.num_hidden_layers}, got {self.num_self_decoder_layers}"
                )
            if not self.cross_decoder_positions:
                raise ValueError("cross_decoder_positions=False needs a cross-decoder (cross_decoder=True)")
            if self.cross_decoder_logn_base is not None:
                raise ValueError("cross_decoder_logn_base needs a cross-decoder (cross_decoder=True)")
            if self.attention_type == "differential" and self.self_decoder != "swa":
                raise ValueError(
                    f"attention_type 'differential' changes only the attention layers, and a "
                    f"{self.self_decoder!r} self-decoder without a cross-decoder has none"
                )
        elif not 1 <= self.num_self_decoder_layers <= self.num_hidden_layers - 1:
            raise ValueError(
                f"num_self_decoder_layers must be in 1..num_hidden_layers-1 "
                f"(1..{self.num_hidden_layers - 1}), got {self.num_self_decoder_layers}"
            )
        if self.cross_decoder_logn_base is not None and self.cross_decoder_logn_base < 2:
            raise ValueError(
                f"cross_decoder_logn_base must be None (no scaling) or a length >= 2, "
                f"got {self.cross_decoder_logn_base!r}"
            )
        if self.gret_chunk_size < 1:
            raise ValueError(f"gret_chunk_size must be >= 1, got {self.gret_chunk_size}")
        if self.short_conv_size == 1 or self.short_conv_size < 0:
            raise ValueError(f"short_conv_size must be 0 (none) or >= 2, got {self.short_conv_size}")
        check_patterns(self.dilated_segments, self.dilated_ratios, ("dilated_segments", "dilated_ratios"))
        if self.self_decoder == "dilated" and self.attention_type != "softmax":
            raise ValueError(
                f"self_decoder 'dilated' needs attention_type 'softmax', got {self.attention_type!r}"
            )

    @property
    def num_cross_decoder_layers(self) -> int:
        return self.num_hidden_layers - self.num_self_decoder_layers


def self_decoder_mixer(config: YocoConfig, layer_index: int) -> tuple[str, nn.Module]:
    """The self-decoder's token mixer and the attribute name it is stored under."""
    if config.self_decoder == "swa":
        return "self_attn", make_self_attention(config, layer_index, window=config.sliding_window)
    if config.self_decoder == "dilated":
        return "self_attn", DilatedAttention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.dilated_segments,
            config.dilated_ratios,
        )
    retention = GatedRetention if config.self_decoder == "gret" else MultiScaleRetention
    return "retention", retention(
        config.hidden_size,
        config.num_attention_heads,
        eps=config.rms_norm_eps,
        chunk_size=config.gret_chunk_size,
    )


class YocoModel(DecoderBackbone):
    def __init__(self, config: YocoConfig) -> None:
        super().__init__(config)
        self.config = config
        block = dict(hidden_size=config.hidden_size, eps=config.rms_norm_eps)
        self.self_decoder = nn.ModuleList()
        for i in range(config.num_self_decoder_layers):
            name, mixer = self_decoder_mixer(config, i)
            conv = ShortConv(config.hidden_size, config.short_conv_size) if config.short_conv_size else None
            self.self_decoder.append(
                DecoderLayer(mixer, make_mlp(config), mixer_name=name, short_conv=conv, **block)
            )
        # Differential cross-attention ("Diff-YOCO") reads the same projections packed in pairs.
        shared_kv = DiffSharedKV if config.attention_type == "differential" else SharedKV
        self.shared_kv = (
            shared_kv(config.hidden_size, config.num_key_value_heads, config.head_dim, config.rms_norm_eps)
            if config.cross_decoder
            else None
        )
        self.cross_decoder = nn.ModuleList(
            DecoderLayer(
                make_cross_attention(config, config.num_self_decoder_layers + i),
                make_mlp(config),
                mixer_name="cross_attn",
                **block,
            )
            for i in range(config.num_cross_decoder_layers)
        )

    def body(self, x, rope, cache: YocoCache | None = None, keep_last: int | None = None):
        for i, layer in enumerate(self.self_decoder):
            conv = cache.convs[i] if cache is not None and cache.convs else None
            x = layer(x, rope=rope, cache=None if cache is None else cache.self_decoder[i], conv_state=conv)
        if self.shared_kv is None:  # a self-decoder-only control model
            return last_positions(x, keep_last)
        cross_rope = rope if self.config.cross_decoder_positions else NO_POSITIONS
        if self.config.cross_decoder_logn_base is not None:
            factors = logn_query_scale(rope.positions, self.config.cross_decoder_logn_base)
            cross_rope = LogNScaledQueries(cross_rope, factors)
        keys, values = self.shared_kv(x, cross_rope)  # computed once, read by every cross layer
        key_mask = None
        if cache is not None:
            keys, values, key_mask = cache.shared_kv.append(keys, values)
        # Early exit: positions whose logits nobody asked for skip the cross-decoder. Exact,
        # because cross layers mix positions only through the shared K/V, already complete.
        x = last_positions(x, keep_last)
        if x.shape[1] == 0:
            return x
        cross_rope = cross_rope.last(keep_last)
        for layer in self.cross_decoder:
            x = layer(x, rope=cross_rope, shared_kv=(keys, values), key_mask=key_mask)
        return x

    def new_cache(self, batch_size: int, capacity: int, dtype, device, kv_cache_dtype: str) -> YocoCache:
        config = self.config
        kv_heads, kv_dim = kv_cache_shape(config)  # differential attention packs K/V in pairs
        if config.self_decoder == "swa":
            states = [
                WindowKV(
                    batch_size,
                    kv_heads,
                    kv_dim,
                    config.sliding_window,
                    dtype,
                    device,
                    kv_cache_dtype,
                )
                for _ in self.self_decoder
            ]
        elif config.self_decoder == "dilated":
            # Simple and correct: every key is kept (only the current segments are read).
            states = [
                GrowingKV(
                    batch_size,
                    config.num_key_value_heads,
                    config.head_dim,
                    dtype,
                    device,
                    capacity,
                    kv_cache_dtype,
                )
                for _ in self.self_decoder
            ]
        elif config.self_decoder in RECURRENT_SELF_DECODERS:
            states = [
                RecurrentState(batch_size, config.num_attention_heads, config.head_dim, device)
                for _ in self.self_decoder
            ]
        shared = (
            GrowingKV(batch_size, kv_heads, kv_dim, dtype, device, capacity, kv_cache_dtype)
            if config.cross_decoder
            else None
        )
        convs = [
            ConvState(batch_size, config.short_conv_size, config.hidden_size, dtype, device)
            for _ in self.self_decoder
            if config.short_conv_size
        ]
        return YocoCache(states, shared, dtype, convs)


class YocoForCausalLM(CausalLM):
    config_class = YocoConfig

    def __init__(self, config: YocoConfig) -> None:
        super().__init__(config, YocoModel(config))
