"""Gated retention (gRet), the YOCO paper's recurrent self-decoder mixer, in three forms.

    S_t = γ_t · S_{t-1} + k_tᵀ v_t          (state: d_k × d_v per head)
    o_t = q_t · S_t

with a per-head, per-token scalar decay given as ``log_decay = log γ_t <= 0``. All three forms
share one contract, ``op(q, k, v, log_decay, initial_state=None) -> (o, final_state)``, with
q, k (B, H, N, d_k), v (B, H, N, d_v), log_decay (B, H, N) and states (B, H, d_k, d_v). Any
scaling of k (YOCO uses 1/√d_k) is the caller's business.

* :func:`gated_retention_parallel`: the N × N decay-masked product. Quadratic, obviously
  correct: the reference.
* :func:`gated_retention_recurrent`: one step at a time with O(1) state: decoding.
* :func:`gated_retention_chunkwise`: parallel inside chunks of C tokens, recurrent across
  them: O(N·C) for training and prefill.

Every form keeps the decays and the state in float32 and returns the state in float32
whatever the input dtype (recurrent state kept in half precision drifts and overflows); ``o``
comes back in q's dtype. The parallel and recurrent forms compute everything in float32; the
chunkwise form runs its matrix products, and the decay factors that scale their operands, in the
input dtype.
Decay factors are only ever formed as ``exp(G_i - G_j)`` with ``G_i <= G_j``, so nothing
exponentiates to more than 1.
"""

import torch
import torch.nn.functional as F


def _init_state(q, v, initial_state):
    b, h, _, d_k = q.shape
    if initial_state is not None:
        return initial_state.float()
    return q.new_zeros(b, h, d_k, v.shape[-1], dtype=torch.float32)


def gated_retention_parallel(q, k, v, log_decay, initial_state=None):
    """Reference: o = (QKᵀ ⊙ D) V + (Q ⊙ e^G) S_0 with D_ij = e^(G_i - G_j) for j <= i."""
    out_dtype = q.dtype
    q, k, v, g = q.float(), k.float(), v.float(), log_decay.float()
    s0 = _init_state(q, v, initial_state)
    n = q.shape[-2]
    cum = g.cumsum(-1)  # (B, H, N): G_i = sum of log decays up to and including i
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    diff = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf"))
    decay = diff.exp()  # (B, H, N, N)
    o = ((q @ k.transpose(-1, -2)) * decay) @ v + (q * cum[..., None].exp()) @ s0
    to_end = (cum[..., -1:] - cum).exp()[..., None]  # (B, H, N, 1): decay from j to the end
    final = cum[..., -1, None, None].exp() * s0 + (k * to_end).transpose(-1, -2) @ v
    return o.to(out_dtype), final


def gated_retention_recurrent(q, k, v, log_decay, initial_state=None):
    """Token-by-token recurrence, as used when decoding."""
    out_dtype = q.dtype
    q, k, v, g = q.float(), k.float(), v.float(), log_decay.float()
    state = _init_state(q, v, initial_state)
    outs = []
    for t in range(q.shape[-2]):
        kv = k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, d_k, d_v)
        state = g[:, :, t, None, None].exp() * state + kv
        outs.append((q[:, :, t, None, :] @ state).squeeze(-2))
    return torch.stack(outs, dim=-2).to(out_dtype), state


def gated_retention_chunkwise(q, k, v, log_decay, initial_state=None, chunk_size: int = 64):
    """Parallel within chunks, a short scan over chunk states across them.

    The matrix products run in q's dtype (bfloat16 products are ~10x faster than float32 ones
    for these small shapes on CPUs with AMX); cumulative decays and the carried state stay in
    float32, so rounding does not accumulate along the sequence.
    """
    dtype = q.dtype
    g = log_decay.float()
    s0 = _init_state(q, v, initial_state)
    b, h, n, d_k = q.shape
    d_v = v.shape[-1]
    c = min(chunk_size, n)
    n_chunks = -(-n // c)
    pad = n_chunks * c - n
    if pad:
        # k = v = 0 and log decay 0 past the end leave the state untouched.
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g = F.pad(g, (0, pad))
    q, k, v = (x.reshape(b, h, n_chunks, c, -1) for x in (q, k, v))
    cum = g.view(b, h, n_chunks, c).cumsum(-1)  # (B, H, nc, C): log decay inside each chunk

    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill_(~causal, float("-inf")).exp_()
    # Decay factors lie in [0, 1]: rounded to the input dtype they cost no more than the products'
    # own rounding, and the elementwise work stays in one dtype (mixed-dtype ops promote to a
    # float32 copy of each (C x C) block, about a tenth of a bfloat16 prefill).
    scores = (q @ k.transpose(-1, -2)).mul_(decay.to(dtype))  # (B, H, nc, C, C)
    o = scores @ v  # (B, H, nc, C, d_v): inside each chunk

    # What each chunk adds to the state, and how much it decays what was there before.
    to_end = (cum[..., -1:] - cum).exp_()[..., None].to(dtype)  # (B, H, nc, C, 1)
    chunk_kv = (k * to_end).transpose(-1, -2) @ v  # (B, H, nc, d_k, d_v)
    chunk_decay = cum[..., -1].exp()[..., None, None]  # (B, H, nc, 1, 1)
    states = [s0]  # the float32 state entering each chunk, then the one leaving the sequence
    for i in range(n_chunks):
        states.append(torch.addcmul(chunk_kv[:, :, i], chunk_decay[:, :, i], states[-1]))
    entering = torch.stack(states[:-1], dim=2).to(dtype)  # (B, H, nc, d_k, d_v)
    o += (q * cum[..., None].exp().to(dtype)) @ entering  # from the chunks before

    o = o.reshape(b, h, n_chunks * c, d_v)[:, :, :n]
    return o, states[-1]
