"""Analytical costs of prefill and decode, from the shapes alone.

These give the *theoretical* ratios printed beside every measured one. Counts are
multiply-accumulates x 2 (FLOPs) of the matrix products; element-wise work (norms, rotary,
softmax, gates, the short convolution's K products per channel and token) is left out, as is
usual, which is why no real run reaches the matmul peak.

Conventions, matching what the engine runs:
* prefill computes logits for the last position only (for every system, HF Llama included);
* causal attention over N tokens costs sum_i (i+1) key visits, i.e. N(N+1)/2;
* YOCO's cross-decoder runs for the last prompt position only (early exit);
* gated retention is counted as the chunkwise algorithm computes it (C x C scores per chunk,
  one state read and one state update per token).
"""

from dataclasses import dataclass

from yoco.models.registry import resolve


@dataclass(frozen=True)
class Shape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    sliding_window: int = 1024
    gret_chunk_size: int = 64

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def self_layers(self) -> int:
        return self.num_hidden_layers // 2

    @property
    def cross_layers(self) -> int:
        return self.num_hidden_layers - self.self_layers

    def ffn_macs(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    def attention_proj_macs(self) -> int:
        d = self.hidden_size
        return 2 * d * d + 2 * d * self.kv_dim  # q, o + k, v


# The fields a YOCO's costs here depend on; a name that sets any other (differential attention,
# experts, BitNet, a model without a cross-decoder) is a model these formulas do not describe.
COSTED_YOCO_FIELDS = {"self_decoder", "short_conv_size", "cross_decoder_positions"}


def self_decoder(system: str) -> str | None:
    """``"swa"`` or ``"gret"`` for a YOCO registry name, ``None`` for a Transformer
    (``"transformer"`` or Hugging Face's ``"hf-llama"``); ValueError for a model the cost model
    does not cover."""
    if system == "hf-llama":
        return None
    architecture, fields = resolve(system)
    if architecture == "transformer" and not fields:
        return None
    if (
        architecture == "yoco"
        and set(fields) <= COSTED_YOCO_FIELDS
        and fields["self_decoder"] in ("swa", "gret")
    ):
        return fields["self_decoder"]
    raise ValueError(
        f"{system!r}: the cost model covers a plain Transformer and YOCO-SWA / YOCO-gRet with "
        f"options {', '.join(sorted(COSTED_YOCO_FIELDS))} only"
    )


def _short_conv_size(system: str) -> int:
    """Width of the convolution before each self-decoder mixer that ``system`` has (0: none)."""
    return 0 if self_decoder(system) is None else resolve(system)[1].get("short_conv_size", 0)


def _attention_macs(shape: Shape, key_visits: int) -> int:
    """Scores and weighted sum: 2 x head_dim per (query, key, head)."""
    return 2 * shape.head_dim * shape.num_attention_heads * key_visits


def _causal_visits(n: int, window: int | None = None) -> int:
    if window is None or window >= n:
        return n * (n + 1) // 2
    return window * (window + 1) // 2 + (n - window) * window


def prefill_flops(system: str, shape: Shape, n: int) -> float:
    """FLOPs to prefill ``n`` tokens and produce the next-token logits."""
    d = shape.hidden_size
    lm_head = d * shape.vocab_size
    kind = self_decoder(system)
    if kind is None:
        per_layer = n * (shape.attention_proj_macs() + shape.ffn_macs()) + _attention_macs(
            shape, _causal_visits(n)
        )
        return 2.0 * (shape.num_hidden_layers * per_layer + lm_head)

    if kind == "swa":
        mixer = n * shape.attention_proj_macs() + _attention_macs(
            shape, _causal_visits(n, shape.sliding_window)
        )
    else:
        h, dk = shape.num_attention_heads, shape.head_dim
        c = min(shape.gret_chunk_size, n)
        projections = n * (5 * d * d + d * h)  # q, k, v, gate, out + decay
        retention = n * h * (2 * c * dk + 2 * dk * dk)  # intra-chunk scores and sums; state read/update
        mixer = projections + retention
    self_layers = shape.self_layers * (mixer + n * shape.ffn_macs())
    shared_kv = n * 2 * d * shape.kv_dim
    cross_last = shape.cross_layers * (2 * d * d + _attention_macs(shape, n) + shape.ffn_macs())
    return 2.0 * (self_layers + shared_kv + cross_last + lm_head)


def cache_bytes(system: str, shape: Shape, n: int, bytes_per_element: int) -> int:
    """Inference-state bytes after ``n`` tokens (gRet state is float32 whatever the dtype)."""
    kv_per_token = 2 * shape.kv_dim * bytes_per_element
    kind = self_decoder(system)
    if kind is None:
        return shape.num_hidden_layers * kv_per_token * n
    if kind == "swa":
        state = shape.self_layers * kv_per_token * shape.sliding_window  # ring buffer of W
    else:
        state = shape.self_layers * shape.num_attention_heads * shape.head_dim**2 * 4
    if kernel := _short_conv_size(system):  # its last K-1 inputs, in the model's dtype
        state += shape.self_layers * (kernel - 1) * shape.hidden_size * bytes_per_element
    return state + kv_per_token * n


def parameter_count(shape: Shape, system: str) -> int:
    """Non-embedding parameters plus the LM head (what every decode step reads)."""
    d = shape.hidden_size
    norms = 2 * d
    kind = self_decoder(system)
    if kind is None:
        return (
            shape.num_hidden_layers * (shape.attention_proj_macs() + shape.ffn_macs() + norms)
            + d * shape.vocab_size
        )
    if kind == "swa":
        mixer = shape.attention_proj_macs()
    else:
        mixer = 5 * d * d + d * shape.num_attention_heads
    cross = 2 * d * d
    conv = d * _short_conv_size(system)
    return (
        shape.self_layers * (mixer + conv + shape.ffn_macs() + norms)
        + 2 * d * shape.kv_dim
        + shape.cross_layers * (cross + shape.ffn_macs() + norms)
        + d * shape.vocab_size
    )


def cache_read_bytes(system: str, shape: Shape, n: int, bytes_per_element: int) -> int:
    """Cache bytes one decode step reads for one sequence at context ``n``.

    Every attention layer reads the K/V it attends to. In YOCO that is the one global K/V, but
    it is read once per *cross-decoder* layer (each layer's query depends on the previous
    layer's output), so YOCO reads L/2 copies' worth per step while storing one: the cache is
    ~L times smaller, the per-step cache traffic only ~2 times.
    """
    kv_per_token = 2 * shape.kv_dim * bytes_per_element
    if self_decoder(system) is None:
        return shape.num_hidden_layers * kv_per_token * n
    state = cache_bytes(system, shape, 0, bytes_per_element)  # constant self-decoder state
    return state + shape.cross_layers * kv_per_token * n


def decode_bytes(system: str, shape: Shape, n: int, bytes_per_element: int, batch: int = 1) -> int:
    """Bytes one decode step must move at context ``n``: the weights once, plus each
    sequence's cache reads. Decoding is memory-bound, so this bounds its speed."""
    weights = parameter_count(shape, system) * bytes_per_element
    return weights + batch * cache_read_bytes(system, shape, n, bytes_per_element)
