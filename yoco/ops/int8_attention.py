"""One decode step's attention over an int8 cache in a single pass: a C kernel (AVX-512 VNNI).

The PyTorch path (:func:`yoco.ops.decode_attention.int8_decode_attention`) makes three passes:
an int8 product for the scores, a softmax, a weight-only int8 product for the values. Each
pass streams its operand from memory while the next waits, so the step reads the cache at
55-75% of the machine's read bandwidth. This kernel reads each key and value once, in blocks
of ``BLOCK`` positions small enough that the scores stay in the CPU's cache:

* **Scores**, 16 keys at a time: ``vpdpbusd`` multiplies a key's 64 int8 values by the int8
  query and sums them in fours (the key is made unsigned by flipping its sign bit, i.e. adding
  128, and 128·Σq is subtracted after); a transposing tree of adds turns the sixteen partial
  vectors into sixteen sums; the query and key scales make them float32 scores.
* **Softmax**, online over blocks (the running maximum and sum rescale the accumulator when a
  block raises the maximum), masked keys scored far below any real one.
* **Weighted sum**: the block's weights p·value-scale become int16 of the block's largest
  (15 bits, finer than the bfloat16 weights of the PyTorch path) and ``vpdpwssd`` sums them
  against the values, which the cache keeps positions last: one contiguous run per dimension.
* While the keys of a block stream in, its values are prefetched, and while the values stream
  in, the next block's keys: without that, memory idles during each phase's arithmetic.

Work items are (row, K/V head, slice of positions), run on PyTorch's OpenMP threads and merged
by log-sum-exp. The query is rounded to int8 exactly as in the PyTorch path, so the two agree to
float32 rounding and the weights' 15 bits. Requires the AVX-512 F/BW/VL/VNNI instructions
(Intel since Ice Lake/Cascade Lake, AMD since Zen 4); elsewhere the PyTorch path runs.
"""

import ctypes

import torch

from yoco.ops.native import NativeKernel
from yoco.ops.quantize import QuantizedKV, quantize_int8

BLOCK = 1024  # positions per block (512 to 2048 measured within 5% of each other)
MAX_GROUPED_QUERIES = 16  # query heads per K/V head the kernel's score buffer holds
MIN_SLICE = 2048  # positions per work item at least: fewer make the merge cost more than it saves

SOURCE = r"""
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512VNNI__)
#error "the int8 attention kernel needs AVX-512 F, BW, VL and VNNI"
#endif
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define BLOCK {BLOCK}
#define MAX_REP {MAX_REP}
#define NONE (-1e30f)  /* the score of a masked key, and the maximum before any key */

/* Keys start..end of one (row, K/V head): its rep queries' running maximum `best`, sum of
   exp(score - best) `total` and accumulator acc[rep][d] = sum of exp(score - best) * value. */
static void attend_slice(const int8_t* q8, const float* coef, const int8_t* keys, const float* key_scales,
                         const int8_t* values, int64_t value_stride, const float* value_scales,
                         const uint8_t* mask, int64_t rep, int64_t d, int64_t start, int64_t end,
                         float* acc, float* best, float* total) {
    float s[MAX_REP][BLOCK];
    int16_t w16[BLOCK + 64];
    int32_t corr[MAX_REP];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int64_t r = 0; r < rep; r++) {
        int32_t sum = 0;
        for (int64_t e = 0; e < d; e++) sum += q8[r * d + e];
        corr[r] = 128 * sum;
        best[r] = NONE;
        total[r] = 0.f;
        for (int64_t e = 0; e < d; e++) acc[r * d + e] = 0.f;
    }
    for (int64_t b0 = start; b0 < end; b0 += BLOCK) {
        const int64_t nb = end - b0 < BLOCK ? end - b0 : BLOCK, n16 = nb & ~15, n64 = nb & ~63;
        const int64_t row_lines = (nb + 63) / 64, value_lines = row_lines * d;
        const int64_t next = end - b0 - nb < BLOCK ? end - b0 - nb : BLOCK, key_lines = next * d / 64;
        for (int64_t r = 0; r < rep; r++) {
            const int8_t* qr = q8 + r * d;
            const __m512i cr = _mm512_set1_epi32(corr[r]);
            const __m512 cf = _mm512_set1_ps(coef[r]), none = _mm512_set1_ps(NONE);
            for (int64_t j = 0; j < n16; j += 16) {
                if (r == 0) /* this block's values, while its keys stream in */
                    for (int64_t L = j * value_lines / nb; L < (j + 16) * value_lines / nb; L++)
                        _mm_prefetch((const char*)(values + (L / row_lines) * value_stride + b0 + (L % row_lines) * 64),
                                     _MM_HINT_T1);
                __m512i a[16], b[8], c[4];
                for (int i = 0; i < 16; i++) {
                    const int8_t* k = keys + (b0 + j + i) * d;
                    __m512i t = _mm512_setzero_si512();
                    for (int64_t e = 0; e < d; e += 64)
                        t = _mm512_dpbusd_epi32(t, _mm512_xor_si512(_mm512_loadu_si512(k + e), flip),
                                                _mm512_loadu_si512(qr + e));
                    a[i] = t;
                }
                /* sixteen 16-lane partial sums -> one vector of sixteen sums */
                for (int i = 0; i < 8; i++)
                    b[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(a[2 * i], a[2 * i + 1]),
                                            _mm512_unpackhi_epi32(a[2 * i], a[2 * i + 1]));
                for (int i = 0; i < 4; i++)
                    c[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(b[2 * i], b[2 * i + 1]),
                                            _mm512_unpackhi_epi64(b[2 * i], b[2 * i + 1]));
                __m512i e0 = _mm512_add_epi32(_mm512_shuffle_i32x4(c[0], c[1], 0x44), _mm512_shuffle_i32x4(c[0], c[1], 0xEE));
                __m512i e1 = _mm512_add_epi32(_mm512_shuffle_i32x4(c[2], c[3], 0x44), _mm512_shuffle_i32x4(c[2], c[3], 0xEE));
                __m512i dots = _mm512_add_epi32(_mm512_shuffle_i32x4(e0, e1, 0x88), _mm512_shuffle_i32x4(e0, e1, 0xDD));
                __m512 scores = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(dots, cr)),
                                              _mm512_mul_ps(cf, _mm512_loadu_ps(key_scales + b0 + j)));
                if (mask) {
                    __m128i m = _mm_loadu_si128((const __m128i*)(mask + b0 + j));
                    scores = _mm512_mask_blend_ps(_mm_test_epi8_mask(m, m), none, scores);
                }
                _mm512_storeu_ps(&s[r][j], scores);
            }
            for (int64_t j = n16; j < nb; j++) {
                const int8_t* k = keys + (b0 + j) * d;
                int32_t dot = 0;
                for (int64_t e = 0; e < d; e++) dot += (int32_t)qr[e] * (int32_t)k[e];
                s[r][j] = (mask && !mask[b0 + j]) ? NONE : (float)dot * coef[r] * key_scales[b0 + j];
            }
        }
        for (int64_t r = 0; r < rep; r++) {
            float* p = s[r];
            float top = NONE;
            for (int64_t j = 0; j < nb; j++) top = p[j] > top ? p[j] : top;
            if (top <= 0.5f * NONE) continue; /* every key of the block masked */
            if (top > best[r]) {
                const float f = expf(best[r] - top);
                total[r] *= f;
                for (int64_t e = 0; e < d; e++) acc[r * d + e] *= f;
                best[r] = top;
            }
            float sum = 0.f, wmax = 0.f;
            for (int64_t j = 0; j < nb; j++) {
                const float e = expf(p[j] - best[r]);
                sum += e;
                p[j] = e * value_scales[b0 + j];
                wmax = p[j] > wmax ? p[j] : wmax;
            }
            total[r] += sum;
            /* the weights as int16 of the block's largest */
            const float to16 = wmax > 0.f ? 32767.f / wmax : 0.f, back = wmax / 32767.f;
            const __m512 tv = _mm512_set1_ps(to16);
            for (int64_t j = 0; j < n16; j += 16)
                _mm256_storeu_si256((__m256i*)(w16 + j),
                                    _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(p + j), tv))));
            for (int64_t j = n16; j < nb; j++) w16[j] = (int16_t)lrintf(p[j] * to16);
            for (int64_t e = 0; e < d; e++) {
                const int8_t* v = values + e * value_stride + b0;
                if (r == 0 && key_lines > 0) /* the next block's keys, while these values stream in */
                    for (int64_t L = e * key_lines / d; L < (e + 1) * key_lines / d; L++)
                        _mm_prefetch((const char*)(keys + (b0 + nb) * d + L * 64), _MM_HINT_T1);
                __m512i t0 = _mm512_setzero_si512(), t1 = t0;
                for (int64_t j = 0; j < n64; j += 64) {
                    t0 = _mm512_dpwssd_epi32(t0, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(v + j))),
                                             _mm512_loadu_si512(w16 + j));
                    t1 = _mm512_dpwssd_epi32(t1, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)(v + j + 32))),
                                             _mm512_loadu_si512(w16 + j + 32));
                }
                /* lanes summed in float32: their int32 total could overflow */
                float u = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_cvtepi32_ps(t0), _mm512_cvtepi32_ps(t1)));
                for (int64_t j = n64; j < nb; j++) u += (float)((int32_t)w16[j] * (int32_t)v[j]);
                acc[r * d + e] += u * back;
            }
        }
    }
}

/* groups (row, K/V head), each with pointers {keys, key scales, values, value scales, mask or 0};
   work holds splits * (rep * (d + 2)) floats per group; out (groups, rep, d). */
void yoco_int8_attention(const int8_t* q8, const float* coef, const int64_t* pointers, int64_t groups,
                         int64_t rep, int64_t d, int64_t n, int64_t value_stride, int64_t splits,
                         int64_t threads, float* work, float* out) {
    const int64_t item = rep * (d + 2), per = ((n + splits - 1) / splits + 63) / 64 * 64;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t w = 0; w < groups * splits; w++) {
        const int64_t g = w / splits, start = (w % splits) * per, end = start + per < n ? start + per : n;
        const int64_t* ptr = pointers + 5 * g;
        float* acc = work + w * item;
        if (start >= end) {
            for (int64_t r = 0; r < rep; r++) acc[rep * d + r] = NONE, acc[rep * d + rep + r] = 0.f;
            continue;
        }
        /* Weights of keys far below the maximum underflow to subnormals, which cost a microcode
           assist each: flush them to zero here (this thread, this item), and only here. */
        const unsigned int mode = _mm_getcsr();
        _mm_setcsr(mode | 0x8040);
        attend_slice(q8 + g * rep * d, coef + g * rep, (const int8_t*)ptr[0], (const float*)ptr[1],
                     (const int8_t*)ptr[2], value_stride, (const float*)ptr[3], (const uint8_t*)ptr[4],
                     rep, d, start, end, acc, acc + rep * d, acc + rep * d + rep);
        _mm_setcsr(mode);
    }
    for (int64_t g = 0; g < groups; g++)
        for (int64_t r = 0; r < rep; r++) {
            float top = NONE, sum = 0.f;
            for (int64_t s = 0; s < splits; s++) {
                const float b = work[(g * splits + s) * item + rep * d + r];
                top = b > top ? b : top;
            }
            float* o = out + (g * rep + r) * d;
            for (int64_t e = 0; e < d; e++) o[e] = 0.f;
            if (top <= 0.5f * NONE) continue; /* no visible key (never in decoding): zeros */
            for (int64_t s = 0; s < splits; s++) {
                const float* acc = work + (g * splits + s) * item;
                if (acc[rep * d + r] <= 0.5f * NONE) continue;
                const float f = expf(acc[rep * d + r] - top);
                sum += acc[rep * d + rep + r] * f;
                for (int64_t e = 0; e < d; e++) o[e] += acc[r * d + e] * f;
            }
            for (int64_t e = 0; e < d; e++) o[e] /= sum;
        }
}
""".replace("{BLOCK}", str(BLOCK)).replace("{MAX_REP}", str(MAX_GROUPED_QUERIES))

_P, _I = ctypes.c_void_p, ctypes.c_int64
KERNEL = NativeKernel(
    "int8 decode attention", SOURCE, "yoco_int8_attention", [_P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _P, _P]
)


def _fits(q: torch.Tensor, k: QuantizedKV, v: QuantizedKV, key_mask: torch.Tensor | None) -> bool:
    """Shapes and layouts the kernel reads directly: one query per head, head size a multiple
    of 64, keys positions first and values positions last with unit strides, float32 scales
    along positions, a key mask of one row of positions per batch row (or one for all)."""
    b, h, queries, d = q.shape
    h_kv, n = k.shape[1], k.shape[2]
    mask_fits = key_mask is None or (
        key_mask.dim() == 4
        and key_mask.shape[0] in (1, b)
        and key_mask.shape[1:3] == (1, 1)
        and key_mask.shape[3] >= n
    )
    return (
        queries == 1
        and d % 64 == 0
        and h % h_kv == 0
        and h // h_kv <= MAX_GROUPED_QUERIES
        and n > 0
        and k.shape == v.shape == (b, h_kv, n, d)
        and mask_fits
        and k.values.stride(-1) == 1
        and k.values.stride(-2) == d
        and v.values.stride(-2) == 1
        and k.values.dtype == v.values.dtype == torch.int8
        and k.scales.dtype == v.scales.dtype == torch.float32
        and k.scales.stride(-2) == v.scales.stride(-2) == 1
    )


def _group_addresses(x: torch.Tensor) -> torch.Tensor:
    """The address of each (row, head) of a (B, H, ...) tensor, (B·H,)."""
    b, h = x.shape[:2]
    offsets = torch.arange(b, device="cpu")[:, None] * x.stride(0) + torch.arange(h, device="cpu")[
        None, :
    ] * x.stride(1)
    return (x.data_ptr() + offsets * x.element_size()).reshape(-1)


def native_int8_attention(
    q: torch.Tensor, k: QuantizedKV, v: QuantizedKV, key_mask: torch.Tensor | None, scale: float
) -> torch.Tensor | None:
    """The kernel's attention (B, H, 1, d) in q's dtype, or None where it does not apply (other
    shapes or layouts, or no kernel on this machine): the caller then runs the PyTorch path."""
    if q.device.type != "cpu" or not _fits(q, k, v, key_mask):
        return None
    function = KERNEL.function()
    if function is None:
        return None
    b, h, _, d = q.shape
    h_kv, n = k.shape[1], k.shape[2]
    rep, groups = h // h_kv, b * h_kv
    q_values, q_scales = quantize_int8(q.reshape(b, h_kv, rep, d))  # as the PyTorch path rounds it
    q_values = q_values.contiguous()
    coefficients = (q_scales * scale).contiguous()
    if key_mask is not None:  # (B or 1, 1, 1, ≥ n) bool -> one row of n bytes per batch row
        key_mask = key_mask[..., :n].expand(b, 1, 1, n).reshape(b, n).to(torch.uint8).contiguous()
        masks = (key_mask.data_ptr() + torch.arange(b, device="cpu") * n).repeat_interleave(h_kv)
    else:
        masks = torch.zeros(groups, dtype=torch.int64, device="cpu")
    pointers = torch.stack(
        [
            _group_addresses(k.values),
            _group_addresses(k.scales),
            _group_addresses(v.values),
            _group_addresses(v.scales),
            masks,
        ],
        dim=1,
    ).contiguous()
    threads = torch.get_num_threads()
    splits = max(1, min(-(-4 * threads // groups), n // MIN_SLICE))
    # float32 on the CPU whatever torch's default dtype and device: the kernel writes floats.
    work = torch.empty(groups * splits * rep * (d + 2), dtype=torch.float32, device="cpu")
    out = torch.empty(groups, rep, d, dtype=torch.float32, device="cpu")
    function(
        q_values.data_ptr(),
        coefficients.data_ptr(),
        pointers.data_ptr(),
        groups,
        rep,
        d,
        n,
        v.values.stride(-1),
        splits,
        threads,
        work.data_ptr(),
        out.data_ptr(),
    )
    return out.reshape(b, h, 1, d).to(q.dtype)
