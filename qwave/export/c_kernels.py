"""The C99 kernels an exported model.c carries: one per format family, emitted only when a layer uses it (an unused
static function would fail ``-Wall -Werror``).

Each is qwave's own recipe (``qwave.formats``, ``qwave.kernels``) written out in C: the same per-row activation
quantization, the same exact integer dot products, the same float32 epilogue order, so the logits equal qwave's
(the float formats and the weight-only option sum in another order than PyTorch's GEMM: float32 rounding apart).
"""

from __future__ import annotations

PRELUDE = r"""#include "model.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#endif
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* qwave's epilogue rounds every product; no fused multiply-add */
#endif

#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_HARDTANH 2

static float activate(float v, int act)
{
    if (act == ACT_RELU) return v < 0.0f ? 0.0f : v;
    if (act == ACT_HARDTANH) return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    return v;
}
"""

HALF = r"""
/* IEEE half (stored bit pattern) -> float, exactly. */
static float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
    float f;
    if (exponent == 0) {
        f = ldexpf((float)mantissa, -24);
        return sign ? -f : f;
    }
    bits = sign | (exponent == 31 ? 0x7f800000u : (exponent + 112u) << 23) | (mantissa << 13);
    memcpy(&f, &bits, sizeof f);
    return f;
}
"""

BF16 = r"""
static float bf16_to_float(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
"""

DOT_U8I8 = r"""
/* Exact int32 dot product of activation codes a in 0..127 (uint8) and weight codes b in [-127, 127] (int8). */
static int32_t dot_u8i8(const uint8_t *a, const int8_t *b, int n)
{
    int32_t total = 0;
    int k = 0;
#if defined(__AVX2__)
    /* vpmaddubsw multiplies unsigned by signed bytes and adds pairs into int16: a pair is at most 2 * 127 * 127 <
       2^15 (a <= 127), never saturated. */
    __m256i acc = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    __m128i sum;
    for (; k + 32 <= n; k += 32) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(const void *)(a + k));
        __m256i vb = _mm256_loadu_si256((const __m256i *)(const void *)(b + k));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(va, vb), ones));
    }
    sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4e));
    sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xb1));
    total = _mm_cvtsi128_si32(sum);
#elif defined(__ARM_NEON)
    int32x4_t acc = vdupq_n_s32(0);
    for (; k + 16 <= n; k += 16) {
        int8x16_t va = vreinterpretq_s8_u8(vld1q_u8(a + k)), vb = vld1q_s8(b + k); /* a <= 127: the same as int8 */
        acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(va), vget_low_s8(vb)));
        acc = vpadalq_s16(acc, vmull_s8(vget_high_s8(va), vget_high_s8(vb)));
    }
    total = vgetq_lane_s32(acc, 0) + vgetq_lane_s32(acc, 1) + vgetq_lane_s32(acc, 2) + vgetq_lane_s32(acc, 3);
#endif
    { /* portable: 16 independent lanes, which compilers vectorize at -O2; a product fits int16 (127 * 127) */
        int32_t lanes[16] = {0};
        int j;
        for (; k + 16 <= n; k += 16)
            for (j = 0; j < 16; ++j) lanes[j] += (int16_t)((int16_t)a[k + j] * (int16_t)b[k + j]);
        for (j = 0; j < 16; ++j) total += lanes[j];
    }
    for (; k < n; ++k) total += (int32_t)a[k] * (int32_t)b[k];
    return total;
}
"""

ACT8 = r"""
/* qwave's dynamic per-row activations on 128 levels with a zero point (quantize_rows_int8), in its float32 operations:
   s = (max(x, 0) + max(-x, 0)) / 127, z = min(rint(max(-x, 0) / s), 127), q = rint(clamp(x / s, -z, 127 - z)) + z
   (half to even; clamping to integer bounds before rounding equals clamping after); all codes and z 0 when s = 0.
   The value of a code is (q - z) * s. */
static float quantize_row(const float *x, int n, uint8_t *q, int32_t *zero)
{
    float top = 0.0f, bottom = 0.0f, s, z;
    int k;
    for (k = 0; k < n; ++k) {
        top = x[k] > top ? x[k] : top;
        bottom = -x[k] > bottom ? -x[k] : bottom;
    }
    s = (top + bottom) / 127.0f;
    *zero = 0;
    if (s == 0.0f) {
        memset(q, 0, (size_t)n);
        return s;
    }
    z = rintf(bottom / s);
    z = z > 127.0f ? 127.0f : z;
    *zero = (int32_t)z;
    for (k = 0; k < n; ++k) {
        float v = x[k] / s;
        v = v < -z ? -z : (v > 127.0f - z ? 127.0f - z : v);
        q[k] = (uint8_t)((int32_t)rintf(v) + *zero);
    }
    return s;
}
"""

DECODE_BITS = r"""
/* k-bit fields of a little-endian bit stream (qwave's int<k> rows): two's complement, or the half-step grid's odd
   codes 2u - qmax when qmax > 0. */
static void decode_bits(const uint8_t *row, int n, int k, int qmax, int8_t *out)
{
    int i;
    if (k == 4 && !qmax) { /* nibbles, low first: sign-extend each */
        for (i = 0; i < n; ++i) {
            int v = (row[i >> 1] >> ((i & 1) * 4)) & 15;
            out[i] = (int8_t)(v >= 8 ? v - 16 : v);
        }
        return;
    }
    for (i = 0; i < n; ++i) {
        long bit = (long)i * k;
        int at = (int)(bit >> 3), shift = (int)(bit & 7);
        unsigned v = (unsigned)row[at] >> shift;
        if (shift + k > 8) v |= (unsigned)row[at + 1] << (8 - shift);
        v &= (1u << k) - 1u;
        if (qmax) out[i] = (int8_t)(2 * (int)v - qmax);
        else out[i] = (int8_t)(v >= (1u << (k - 1)) ? (int)v - (1 << k) : (int)v);
    }
}
"""

def decode_trits() -> str:
    """``decode_trits`` with its table: the five trits of every byte value below 3^5 (1,215 bytes of rodata)."""
    rows = []
    for byte in range(243):
        trits = [(byte // 3**i) % 3 - 1 for i in range(5)]
        rows.append("{" + ", ".join(map(str, trits)) + "}")
    table = ",\n    ".join(", ".join(rows[i : i + 8]) for i in range(0, 243, 8))
    return (f"""
/* Five trits per byte, byte = sum_i (t_i + 1) 3^i (qwave's ternary rows), decoded by a table. */
static const int8_t trit_table[243][5] = {{
    {table}
}};

static void decode_trits(const uint8_t *row, int n, int8_t *out)
{{
    int i = 0, t;
    for (; i + 5 <= n; i += 5) memcpy(out + i, trit_table[row[i / 5]], 5);
    for (t = 0; i < n; ++i, ++t) out[i] = trit_table[row[i / 5]][t];
}}
""")


def decode_row(kinds: set[str]) -> str:
    """``decode_row``: one stored row of integer codes -> int8 codes, for the code layouts in ``kinds``."""
    cases = []
    if "int8" in kinds:
        cases.append("    if (kind == 8) { memcpy(out, row, (size_t)n); return; }")
    if "trits" in kinds:
        cases.append("    if (kind == 0) { decode_trits(row, n, out); return; }")
    if "bits" in kinds:
        cases.append("    decode_bits(row, n, kind, qmax, out);")
    unused = "    (void)qmax;\n" if "bits" not in kinds else ""
    return ("\n/* kind: 8 int8 bytes, 0 base-3 trits, 2..7 k-bit fields (qmax: half-step grid, else 0). */\n"
            "static void decode_row(const uint8_t *row, int n, int kind, int qmax, int8_t *out)\n{\n"
            + unused + "\n".join(cases) + "\n}\n")


WA8 = r"""
/* W·A8 (int2..int8, ternary): dot_g = sum(q * w) - z * colsum_g (the exact dot of q - z with the weight codes, every
   int32 term at most 127 * 127 * n), y = s_x * sum_g(float(dot_g) * s_w[o, g]) + b, groups in order. */
static void wa8(const float *x, float *y, int n, int out, const uint8_t *codes, int row_bytes, int kind, int qmax,
                const uint16_t *scale, const int32_t *colsum, int groups, int size, const float *bias, int act)
{
    uint8_t q[QWAVE_MAX_WIDTH];
    int8_t w[QWAVE_MAX_WIDTH];
    int32_t z;
    float s = quantize_row(x, n, q, &z);
    int o, g;
    for (o = 0; o < out; ++o) {
        float f = 0.0f, v;
        const int8_t *row = w;
        if (kind == 8) row = (const int8_t *)(const void *)(codes + (long)o * row_bytes); /* int8: read in place */
        else decode_row(codes + (long)o * row_bytes, n, kind, qmax, w);
        for (g = 0; g < groups; ++g) {
            int start = g * size, len = n - start < size ? n - start : size;
            int32_t dot = dot_u8i8(q + start, row + start, len) - z * colsum[o * groups + g];
            f += (float)dot * half_to_float(scale[o * groups + g]);
        }
        v = f * s;
        if (bias) v += bias[o];
        y[o] = activate(v, act);
    }
}
"""

TERNARY_A8 = r"""
/* ternary W1.58A8 read from its five-trits-per-byte rows without decoding them: for each 5 activation codes, a table
   of the 243 sums sum_i t_i q_i (one per byte value, at most 5 * 127 in magnitude) is built once per call, then a
   row's sum(q * t) is one table look-up per byte (the lookup-table idea of T-MAC / bitnet.cpp), less z times the
   row's trit sum: the same integer dots as wa8. Tables are built TRIT_CHUNK byte columns at a time (TRIT_CHUNK * 243
   * 2 bytes of stack). */
#define TRIT_CHUNK 32

static void trit_sums(const uint8_t *q, int16_t *table)
{
    int16_t low[27], high;
    int a, b, c, i = 0;
    for (c = -1; c <= 1; ++c)
        for (b = -1; b <= 1; ++b)
            for (a = -1; a <= 1; ++a) low[i++] = (int16_t)(a * q[0] + b * q[1] + c * q[2]);
    i = 0;
    for (c = -1; c <= 1; ++c)
        for (b = -1; b <= 1; ++b) {
            high = (int16_t)(b * q[3] + c * q[4]);
            for (a = 0; a < 27; ++a) table[i++] = (int16_t)(low[a] + high);
        }
}

static void ternary_a8(const float *x, float *y, int n, int out, const uint8_t *codes, int row_bytes,
                       const uint16_t *scale, const int32_t *colsum, const float *bias, int act)
{
    uint8_t q[QWAVE_MAX_WIDTH + 5];
    int16_t table[TRIT_CHUNK][243];
    int32_t dots[QWAVE_MAX_WIDTH], z;
    float s = quantize_row(x, n, q, &z);
    int o, j, c0;
    memset(q + n, 0, 5); /* a row's padding trits are 0; their codes only need to be finite */
    memset(dots, 0, sizeof(int32_t) * (size_t)out);
    for (c0 = 0; c0 < row_bytes; c0 += TRIT_CHUNK) {
        int cols = row_bytes - c0 < TRIT_CHUNK ? row_bytes - c0 : TRIT_CHUNK;
        for (j = 0; j < cols; ++j) trit_sums(q + 5 * (c0 + j), table[j]);
        for (o = 0; o < out; ++o) {
            const uint8_t *row = codes + (long)o * row_bytes + c0;
            int32_t total = 0;
            for (j = 0; j < cols; ++j) total += table[j][row[j]];
            dots[o] += total;
        }
    }
    for (o = 0; o < out; ++o) {
        float f = 0.0f, v;
        f += (float)(dots[o] - z * colsum[o]) * half_to_float(scale[o]);
        v = f * s;
        if (bias) v += bias[o];
        y[o] = activate(v, act);
    }
}
"""

DEQUANT = r"""
/* Weight-only integer formats (activations="float"): y = x . (code * s_w[o, g]) + b in float32. */
static void dense_dequant(const float *x, float *y, int n, int out, const uint8_t *codes, int row_bytes, int kind,
                          int qmax, const uint16_t *scale, int groups, int size, const float *bias, int act)
{
    int8_t w[QWAVE_MAX_WIDTH];
    int o, k;
    for (o = 0; o < out; ++o) {
        float total = 0.0f;
        decode_row(codes + (long)o * row_bytes, n, kind, qmax, w);
        for (k = 0; k < n; ++k) total += x[k] * ((float)w[k] * half_to_float(scale[o * groups + k / size]));
        if (bias) total += bias[o];
        y[o] = activate(total, act);
    }
}
"""

DENSE = r"""
/* Float weights ({type}): y = x . w + b in float32, the weight converted in the loop. */
static void dense_{name}(const float *x, float *y, int n, int out, const {ctype} *w, const float *bias, int act)
{{
    int o, k;
    for (o = 0; o < out; ++o) {{
        float total = 0.0f;
        const {ctype} *row = w + (long)o * n;
        for (k = 0; k < n; ++k) total += x[k] * {convert};
        if (bias) total += bias[o];
        y[o] = activate(total, act);
    }}
}}
"""

DENSE_TYPES = {
    "fp32": ("float32", "float", "row[k]"),
    "fp16": ("float16 bit patterns", "uint16_t", "half_to_float(row[k])"),
    "bf16": ("bfloat16 bit patterns", "uint16_t", "bf16_to_float(row[k])"),
}


def dense(name: str) -> str:
    kind, ctype, convert = DENSE_TYPES[name]
    return DENSE.format(type=kind, name=name, ctype=ctype, convert=convert)


POPCOUNT = r"""
static int popcount64(uint64_t v)
{
#if defined(__GNUC__)
    return __builtin_popcountll(v);
#else
    v = v - ((v >> 1) & 0x5555555555555555ull);
    v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
    v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
    return (int)((v * 0x0101010101010101ull) >> 56);
#endif
}

/* mean|x| summed in double, then float (qwave's popcount kernels). */
static float abs_mean(const float *x, int n)
{
    double total = 0.0;
    int k;
    for (k = 0; k < n; ++k) total += fabs((double)x[k]);
    return (float)(total / n);
}

#define WORDS(n) (((n) + 63) / 64)
"""

BINARY = r"""
/* binary: sign bits (x >= 0) against the weight's sign words, dot = n - 2 popcount(x XOR w),
   y = float(dot) * s_x * s_w + b. */
static void binary_layer(const float *x, float *y, int n, int out, const uint64_t *bits, const uint16_t *scale,
                         const float *bias, int act)
{
    uint64_t xb[WORDS(QWAVE_MAX_WIDTH)];
    int words = WORDS(n), o, k;
    float s = abs_mean(x, n);
    memset(xb, 0, sizeof xb);
    for (k = 0; k < n; ++k)
        if (x[k] >= 0.0f) xb[k / 64] |= (uint64_t)1 << (k % 64);
    for (o = 0; o < out; ++o) {
        const uint64_t *w = bits + (long)o * words;
        int differ = 0;
        float v;
        for (k = 0; k < words; ++k) differ += popcount64(xb[k] ^ w[k]);
        v = (float)(n - 2 * differ) * s * half_to_float(scale[o]);
        if (bias) v += bias[o];
        y[o] = activate(v, act);
    }
}
"""

QESC = r"""
/* qesc: activation trits rint(x / s_x) (s_x = mean|x|) as nonzero / negative bit-planes against the weight's plus /
   minus planes: dot = pop(nz) - 2 pop(nz & (neg_x ^ neg_w)) with nz = nz_x & (plus | minus). */
static void qesc_layer(const float *x, float *y, int n, int out, const uint64_t *plus, const uint64_t *minus,
                       const uint16_t *scale, const float *bias, int act)
{
    uint64_t nz[WORDS(QWAVE_MAX_WIDTH)], neg[WORDS(QWAVE_MAX_WIDTH)];
    int words = WORDS(n), o, k;
    float s = abs_mean(x, n);
    memset(nz, 0, sizeof nz);
    memset(neg, 0, sizeof neg);
    if (s != 0.0f) {
        for (k = 0; k < n; ++k) {
            float t = rintf(x[k] / s);
            if (t != 0.0f) nz[k / 64] |= (uint64_t)1 << (k % 64);
            if (t < 0.0f) neg[k / 64] |= (uint64_t)1 << (k % 64);
        }
    }
    for (o = 0; o < out; ++o) {
        const uint64_t *p = plus + (long)o * words, *m = minus + (long)o * words;
        int dot = 0;
        float v;
        for (k = 0; k < words; ++k) {
            uint64_t both = nz[k] & (p[k] | m[k]);
            dot += popcount64(both) - 2 * popcount64(both & (neg[k] ^ m[k]));
        }
        v = (float)dot * s * half_to_float(scale[o]);
        if (bias) v += bias[o];
        y[o] = activate(v, act);
    }
}
"""

LAYER_NORM = r"""
static void layer_norm(float *x, int n, const float *weight, const float *bias, float eps)
{
    double mean = 0.0, var = 0.0;
    float inv;
    int k;
    for (k = 0; k < n; ++k) mean += x[k];
    mean /= n;
    for (k = 0; k < n; ++k) var += (x[k] - mean) * (x[k] - mean);
    inv = (float)(1.0 / sqrt(var / n + eps));
    for (k = 0; k < n; ++k) x[k] = (float)((x[k] - mean) * inv) * weight[k] + bias[k];
}
"""

MAIN = r"""/* Reads raw little-endian float32 rows of QWAVE_IN values; prints the class name of each, one per line. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

int main(int argc, char **argv)
{
    static unsigned char raw[4 * QWAVE_IN];
    static float x[QWAVE_IN], logits[QWAVE_CLASSES];
    FILE *f;
    size_t got;
    if (argc != 2) {
        fprintf(stderr, "usage: %s rows.f32  (raw little-endian float32 rows of %d values)\n", argv[0], QWAVE_IN);
        return 2;
    }
    f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    while ((got = fread(raw, 1, sizeof raw, f)) == sizeof raw) {
        int i;
        for (i = 0; i < QWAVE_IN; ++i) {
            uint32_t bits = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 | (uint32_t)raw[4 * i + 2] << 16
                            | (uint32_t)raw[4 * i + 3] << 24;
            memcpy(&x[i], &bits, sizeof x[i]);
        }
        puts(qwave_classes[qwave_predict(x, logits)]);
    }
    fclose(f);
    if (got != 0) {
        fprintf(stderr, "%s: %lu trailing bytes are not a whole row of %d float32 values\n", argv[1],
                (unsigned long)got, QWAVE_IN);
        return 1;
    }
    return 0;
}
"""
