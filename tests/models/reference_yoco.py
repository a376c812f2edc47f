"""An independent YOCO forward pass, written from the paper's equations in plain tensor code.

Sun et al. 2024, "You Only Cache Once: Decoder-Decoder Architectures for Language Models"
(arXiv 2405.05254); section numbers below are the paper's. Nothing here comes from
``yoco.layers`` or ``yoco.ops``: the model under test contributes only its config fields and
its ``state_dict()`` tensors (by name). Everything is computed in float64, so comparing a
float32 model with this reference measures the model's own rounding error.

Where the library deliberately differs from the official code (microsoft/unilm, YOCO/), this
file follows the library's documented convention and says so:
  * embeddings are *not* multiplied by √hidden (the official code does);
  * rotary uses Llama's rotate-half layout with frequencies θ^(-2i/d) (the official code
    rotates interleaved pairs with frequencies θ^(-linspace(0, 1, d/2)));
  * the SWA self-decoder's keys/values use ``num_key_value_heads`` (grouped-query attention);
    the official SWA layer has full key/value heads (identical when the two counts are equal);
  * ``short_conv_size`` > 0 adds a short causal convolution before each self-decoder mixer,
    which neither the paper nor the official code has (the ``yoco-gret`` kind's default);
  * ``cross_decoder_logn_base`` multiplies the cross-decoder's scores by log-n factors beyond
    that many keys, also an addition of the library's.

Shapes: x (B, N, hidden); per-head tensors (B, heads, N, d). Linear weights are in torch's
(out, in) layout, so a projection is ``x @ W.T``.
"""

import math

import torch

GATE_TAU = 16.0  # §2.2.2: log γ = logsigmoid(x W_γ) / τ with τ = 16


# --------------------------------------------------------------------------------------------
# Elementary pieces
# --------------------------------------------------------------------------------------------


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x W: torch stores W transposed, (out, in)."""
    return x @ weight.T


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm(x) = x / sqrt(mean(x²) + ε) ⊙ g (no g for gRet's per-head norm)."""
    out = x / torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return out if weight is None else out * weight


def swish(x: torch.Tensor) -> torch.Tensor:
    """swish(x) = x · σ(x)."""
    return x * torch.sigmoid(x)


def swiglu(x: torch.Tensor, w: dict) -> torch.Tensor:
    """§2.1: SwiGLU(X) = (swish(X W_G) ⊙ X W_1) W_2; Llama names: gate, up, down."""
    return linear(swish(linear(x, w["gate_proj"])) * linear(x, w["up_proj"]), w["down_proj"])


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads·d) -> (B, heads, N, d)."""
    b, n, width = x.shape
    return x.reshape(b, n, heads, width // heads).permute(0, 2, 1, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, d) -> (B, N, heads·d)."""
    b, h, n, d = x.shape
    return x.permute(0, 2, 1, 3).reshape(b, n, h * d)


# --------------------------------------------------------------------------------------------
# Rotary position embedding (RoPE), Llama's rotate-half layout
# --------------------------------------------------------------------------------------------


def rotary_tables(positions: torch.Tensor, head_dim: int, theta: float):
    """Angles m·θ_i for position m and θ_i = θ^(-2i/d), i < d/2 -> (cos, sin), each (N, d/2)."""
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * i / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.cos(angles), torch.sin(angles)


def rotate(x: torch.Tensor, tables) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) by angle m·θ_i:
    (x_i, x_{i+d/2}) -> (x_i cos − x_{i+d/2} sin, x_{i+d/2} cos + x_i sin)."""
    cos, sin = tables
    first, second = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


# --------------------------------------------------------------------------------------------
# Softmax attention with masks
# --------------------------------------------------------------------------------------------


def causal_mask(n_queries: int, n_keys: int) -> torch.Tensor:
    """Queries are the last ``n_queries`` of the ``n_keys`` positions; query at position p sees
    keys j <= p. Bool (Nq, Nk), True = may attend."""
    p = torch.arange(n_keys - n_queries, n_keys)[:, None]
    j = torch.arange(n_keys)[None, :]
    return j <= p


def sliding_window_mask(n: int, window: int) -> torch.Tensor:
    """§2.2.1: query i sees keys i − W + 1 .. i (W counts the current token)."""
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    return (j <= i) & (j >= i - window + 1)


def share_kv_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Grouped-query attention: query head h reads key/value head h // (heads / kv_heads)."""
    return x.repeat_interleave(heads // x.shape[1], dim=1)


def softmax_attention(q, k, v, mask, trace: dict | None = None, name: str = "attention"):
    """Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V, with M = −∞ where the mask is False."""
    k, v = share_kv_heads(k, q.shape[1]), share_kv_heads(v, q.shape[1])
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if trace is not None:
        trace.setdefault(name, []).append((weights, mask))
    return weights @ v


# --------------------------------------------------------------------------------------------
# Self-decoder mixers (§2.2): sliding-window attention and gated retention
# --------------------------------------------------------------------------------------------


def sliding_window_attention_layer(x, w, heads, kv_heads, window, tables, trace=None):
    """§2.2.1 SWA: Q = rot(X W_Q), K = rot(X W_K), V = X W_V; windowed softmax; output W_O."""
    q = rotate(split_heads(linear(x, w["q_proj"]), heads), tables)
    k = rotate(split_heads(linear(x, w["k_proj"]), kv_heads), tables)
    v = split_heads(linear(x, w["v_proj"]), kv_heads)
    out = softmax_attention(q, k, v, sliding_window_mask(x.shape[1], window), trace, "swa")
    return linear(merge_heads(out), w["o_proj"])


def log_gamma(x: torch.Tensor, w_gamma: torch.Tensor, tau: float = GATE_TAU) -> torch.Tensor:
    """§2.2.2: γ_t = sigmoid(x_t W_γ)^(1/τ), i.e. log γ_t = logsigmoid(x_t W_γ) / τ.
    (B, N, hidden) -> (B, heads, N). logsigmoid(z) = −log(1 + e^(−z)), written in the form
    min(z, 0) − log(1 + e^(−|z|)) that cannot overflow."""
    z = linear(x, w_gamma)
    logsigmoid = torch.clamp(z, max=0) - torch.log1p(torch.exp(-z.abs()))
    return (logsigmoid / tau).permute(0, 2, 1)


def gated_retention_recurrence(q, k, v, log_g):
    """§2.2.2, the recurrent form, one token at a time:
    S_t = γ_t S_{t−1} + k_tᵀ v_t,  o_t = q_t S_t,  S_0 = 0.  Returns (o, S_N)."""
    b, h, n, d_k = q.shape
    state = torch.zeros(b, h, d_k, v.shape[-1], dtype=q.dtype)
    outputs = []
    for t in range(n):
        gamma = torch.exp(log_g[:, :, t])[..., None, None]
        state = gamma * state + k[:, :, t, :, None] * v[:, :, t, None, :]  # outer product kᵀv
        outputs.append((q[:, :, t, None, :] @ state)[:, :, 0])
    return torch.stack(outputs, dim=2), state


def gated_retention_layer(x, w, heads, eps, tables, tau=GATE_TAU, trace=None):
    """§2.2.2 gRet: Q = rot(X W_Q), K = rot(X W_K) / √d, V = X W_V, γ from W_γ;
    O = recurrence, per-head RMSNorm without weights, then (swish(X W_G) ⊙ O) W_O.

    The norm makes O blind to any constant factor on k; the 1/√d shows in the state S, which
    ``trace["gret_state"]`` records (what a decoding cache carries)."""
    q = rotate(split_heads(linear(x, w["q_proj"]), heads), tables)
    k = rotate(split_heads(linear(x, w["k_proj"]), heads), tables)
    k = k / math.sqrt(k.shape[-1])
    v = split_heads(linear(x, w["v_proj"]), heads)
    log_g = log_gamma(x, w["decay_proj"], tau)
    o, state = gated_retention_recurrence(q, k, v, log_g)
    if trace is not None:
        trace.setdefault("log_gamma", []).append(log_g)
        trace.setdefault("gret_state", []).append(state)
    o = rms_norm(o, None, eps)
    return linear(swish(linear(x, w["g_proj"])) * merge_heads(o), w["o_proj"])


# --------------------------------------------------------------------------------------------
# Cross-decoder (§2.3): the one shared K/V, and cross-attention to it
# --------------------------------------------------------------------------------------------


def short_convolution(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The library's short convolution (not in the paper): x_t + Σ_{j<K} w[:, K-1-j] ⊙ x_{t-j},
    each channel mixed with its own last K values, zeros before the first position."""
    kernel, n = w.shape[1], x.shape[1]
    out = x.clone()
    for j in range(kernel):
        earlier = torch.zeros_like(x)
        earlier[:, j:] = x[:, : max(n - j, 0)]
        out = out + w[:, kernel - 1 - j] * earlier
    return out


def shared_kv(x, w, kv_heads, eps, tables):
    """§2.3: K̂ = LN(X^{L/2}) W_K, V̂ = LN(X^{L/2}) W_V, computed once; K̂ rotated when the
    cross-decoder has positions (``tables`` is None: no rotation, position-free)."""
    h = rms_norm(x, w["norm"], eps)
    k = split_heads(linear(h, w["k_proj"]), kv_heads)
    v = split_heads(linear(h, w["v_proj"]), kv_heads)
    return (k if tables is None else rotate(k, tables)), v


def logn_factors(n_queries: int, n_keys: int, base: int) -> torch.Tensor:
    """Log-n scaling: the query at position p (the last ``n_queries`` of ``n_keys``) sees p + 1
    keys, and its scores are multiplied by max(1, ln(p + 1) / ln(base)). Shape (Nq,)."""
    keys_seen = torch.arange(n_keys - n_queries, n_keys, dtype=torch.float64) + 1
    return torch.clamp(torch.log(keys_seen) / math.log(base), min=1.0)


def cross_attention_layer(x, keys, values, w, heads, tables, trace=None, logn_base=None):
    """§2.3: Q = X W_Q (rotated with the queries' positions unless position-free);
    causal softmax attention to the shared K̂, V̂; output W_O. ``x`` holds the last Nq of the
    Nk positions; ``tables`` are those of the Nq query positions. With ``logn_base``, each
    query's scores are multiplied by its log-n factor (done on Q: the scores are linear in it)."""
    q = split_heads(linear(x, w["q_proj"]), heads)
    if tables is not None:
        q = rotate(q, tables)
    if logn_base is not None:
        q = q * logn_factors(q.shape[2], keys.shape[2], logn_base)[:, None]
    mask = causal_mask(q.shape[2], keys.shape[2])
    out = softmax_attention(q, keys, values, mask, trace, "cross")
    return linear(merge_heads(out), w["o_proj"])


# --------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------


def weights_under(state_dict: dict, prefix: str) -> dict:
    """The tensors named ``prefix + NAME[.weight]`` as {NAME: float64 tensor}."""
    out = {}
    for key, tensor in state_dict.items():
        if key.startswith(prefix):
            name = key[len(prefix) :].removesuffix(".weight")
            out[name] = tensor.detach().to(torch.float64)
    return out


def weight(state_dict: dict, name: str) -> torch.Tensor:
    """The tensor ``name.weight`` in float64."""
    return state_dict[f"{name}.weight"].detach().to(torch.float64)


def check_supported(config) -> None:
    """The reference covers YOCO with rotary, softmax attention and SwiGLU only."""
    unsupported = {
        "self_decoder": (config.self_decoder, ("swa", "gret")),
        "position_embedding": (config.position_embedding, ("rope",)),
        "attention_type": (config.attention_type, ("softmax",)),
        "ffn_type": (config.ffn_type, ("swiglu",)),
        "bitnet": (config.bitnet, (False,)),
    }
    for field, (value, allowed) in unsupported.items():
        if value not in allowed:
            raise NotImplementedError(f"reference_yoco supports {field} in {allowed}, got {value!r}")


def yoco_logits(config, state_dict: dict, input_ids: torch.Tensor, trace: dict | None = None):
    """Token ids (B, N) -> next-token logits (B, N, vocab) in float64.

    ``trace``, when given, collects the attention weights ("swa", "cross": (weights, mask) per
    layer), and per gRet layer the decays ("log_gamma") and the final state ("gret_state").
    """
    check_supported(config)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    eps = config.rms_norm_eps
    n = input_ids.shape[1]
    tables = rotary_tables(torch.arange(n), head_dim, config.rope_theta)

    # X^0 = embedding (not scaled by √hidden: the library's convention, see the module docstring)
    x = weight(state_dict, "model.embed_tokens")[input_ids]

    # Self-decoder, §2.2: Y^l = ESA(LN(X^l)) + X^l;  X^{l+1} = SwiGLU(LN(Y^l)) + Y^l
    for i in range(config.num_self_decoder_layers):
        w = weights_under(state_dict, f"model.self_decoder.{i}.")
        h = rms_norm(x, w["input_layernorm"], eps)
        if config.short_conv_size:
            h = short_convolution(h, w["short_conv"])
        if config.self_decoder == "swa":
            mixer = weights_under(w, "self_attn.")
            h = sliding_window_attention_layer(
                h, mixer, heads, kv_heads, config.sliding_window, tables, trace
            )
        else:
            mixer = weights_under(w, "retention.")
            h = gated_retention_layer(h, mixer, heads, eps, tables, trace=trace)
        x = x + h
        x = x + swiglu(rms_norm(x, w["post_attention_layernorm"], eps), weights_under(w, "mlp."))

    # The one global K/V, §2.3
    cross_tables = tables if config.cross_decoder_positions else None
    keys, values = shared_kv(x, weights_under(state_dict, "model.shared_kv."), kv_heads, eps, cross_tables)

    # Cross-decoder, §2.3: Y^l = CrossAttn(LN(X^l) W_Q, K̂, V̂) + X^l; X^{l+1} = SwiGLU(LN(Y^l)) + Y^l
    for i in range(config.num_hidden_layers - config.num_self_decoder_layers):
        w = weights_under(state_dict, f"model.cross_decoder.{i}.")
        h = rms_norm(x, w["input_layernorm"], eps)
        x = x + cross_attention_layer(
            h,
            keys,
            values,
            weights_under(w, "cross_attn."),
            heads,
            cross_tables,
            trace,
            config.cross_decoder_logn_base,
        )
        x = x + swiglu(rms_norm(x, w["post_attention_layernorm"], eps), weights_under(w, "mlp."))

    # Final norm and LM head
    x = rms_norm(x, weight(state_dict, "model.norm"), eps)
    return linear(x, weight(state_dict, "lm_head"))
