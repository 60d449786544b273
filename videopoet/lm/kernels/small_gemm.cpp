// y (M, N) = x (M, K) @ w (N, K)^T for a few rows M (decoding: one row per sequence), fp32, CPU.
//
// At M <= 16 a decoding step is bound by reading the weights, not by arithmetic. BLAS libraries
// tune for large M: MKL's sgemm packs w into panels on every call (one more pass over the weights)
// and reached 40-45% of the bandwidth of a plain read at M = 8 here (its M = 1 path is at parity
// with this kernel, and the Python side keeps M = 1 on it). This kernel reads w once,
// in its natural row-major layout (no packed copy, so it always sees the live weights): each
// output column n is the dot product of w's row n with every row of x, accumulated in vector
// registers over K and reduced once at the end. x (M x K floats, ~1.5-6 KB per row) stays in L1.
//
// The same tiles serve decode_attention (one decoding step's attention over a KV cache) and
// decode_layers (every transformer block of a decoding step in one call; see its comment).
//
// Two instruction sets, chosen at run time: AVX-512 (16 floats per register, row tiles of up to
// 16) and AVX2 + FMA (8 floats, tiles of up to 8). Other CPUs (or compilers other than GCC) get
// vector_width() == 0 and the Python side uses PyTorch's linear instead.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VP_X86 1
#include <immintrin.h>
#endif

namespace {

using Kernel = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                        int64_t);

// The matmul kernels prefetch each weight row this many rows ahead: the hardware prefetcher alone
// left them at ~half the bandwidth of a plain read at M = 8 (AVX-512; 8 and 16 were no better).
#ifndef VP_PREFETCH
#define VP_PREFETCH 4
#endif
constexpr int PREFETCH = VP_PREFETCH;

#ifdef VP_X86
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
// r[c] = sum of the 16 lanes of v[c], c < 16: a transpose-and-add tree, 45 instructions for 16
// columns instead of ~12 per column for one horizontal sum (which cost as much as the loop over
// K at K = 384).
inline __m512 hsum16(const __m512* v) {
  __m512 s[8], t[4], p[2];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: a0+a2, b0+b2, a1+a3, b1+b3
    s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: columns 4i..4i+3, a quarter of the lanes each
    t[i] = _mm512_add_ps(_mm512_shuffle_ps(s[2 * i], s[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(s[2 * i], s[2 * i + 1], 0xEE));
  for (int i = 0; i < 2; ++i)  // the 128-bit lanes added in pairs
    p[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(p[0], p[1], 0x88),
                       _mm512_shuffle_f32x4(p[0], p[1], 0xDD));
}

// Columns [n0, n1) of rows [0, M) of y; x, y have row strides K and N. C columns at a time:
// each vector of w's rows is loaded once and multiplied with the same vector of every row of x
// (M x C accumulators in registers); the accumulators of 16 columns are parked in `park` and
// reduced together. K must be a multiple of 16 (the caller checks).
template <int M, int C>
void block(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t n0,
           int64_t n1) {
  static_assert(16 % C == 0, "C divides 16");
  alignas(64) __m512 park[M][16];
  int64_t n = n0;
  for (; n + 16 <= n1; n += 16) {
    for (int c0 = 0; c0 < 16; c0 += C) {
      __m512 acc[M][C];
      for (int m = 0; m < M; ++m)
        for (int c = 0; c < C; ++c) acc[m][c] = _mm512_setzero_ps();
      const float* wn = w + (n + c0) * K;
      for (int64_t k = 0; k < K; k += 16) {
        __m512 wv[C];
        for (int c = 0; c < C; ++c) {
          wv[c] = _mm512_loadu_ps(wn + c * K + k);
          // the same line PREFETCH rows ahead: the hardware prefetcher alone left the kernel at
          // ~half the bandwidth of a plain read at M = 8
          _mm_prefetch(reinterpret_cast<const char*>(wn + (PREFETCH + c) * K + k), _MM_HINT_T0);
        }
        for (int m = 0; m < M; ++m) {
          const __m512 xv = _mm512_loadu_ps(x + m * K + k);
          for (int c = 0; c < C; ++c) acc[m][c] = _mm512_fmadd_ps(xv, wv[c], acc[m][c]);
        }
      }
      for (int m = 0; m < M; ++m)
        for (int c = 0; c < C; ++c) park[m][c0 + c] = acc[m][c];
    }
    for (int m = 0; m < M; ++m) _mm512_storeu_ps(y + m * N + n, hsum16(park[m]));
  }
  for (; n < n1; ++n) {  // the last N % 16 columns of the range
    const float* wn = w + n * K;
    for (int m = 0; m < M; ++m) {
      __m512 acc = _mm512_setzero_ps();
      for (int64_t k = 0; k < K; k += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * K + k), _mm512_loadu_ps(wn + k), acc);
      y[m * N + n] = _mm512_reduce_add_ps(acc);
    }
  }
}

// Rows in tiles of 16, 8, 4, 2, 1 (w is read once per tile); columns per step chosen so that
// the M x C accumulators use at most 16 of the 32 vector registers.
void rows(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n0,
          int64_t n1) {
  int64_t m = 0;
  for (; m + 16 <= M; m += 16) block<16, 1>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m + 8 <= M; m += 8) block<8, 2>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m + 4 <= M; m += 4) block<4, 4>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m + 2 <= M; m += 2) block<2, 4>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m < M; ++m) block<1, 4>(x + m * K, w, y + m * N, K, N, n0, n1);
}

// exp(x) for x <= 0 (softmax after subtracting the max): 2^k * e^r, |r| <= ln2/2, Taylor to r^7
// (relative error < 1e-7); x below -87 gives 0.
inline __m512 exp_neg(__m512 x) {
  const __m512 log2e = _mm512_set1_ps(1.44269504f), ln2 = _mm512_set1_ps(0.693147181f);
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT);
  const __m512 r = _mm512_fnmadd_ps(k, ln2, x);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

// One query row q (D) against keys/values k, v (n x D, row stride D) of one head; valid: n
// contiguous bools; D % 16 == 0, D <= 256; scores: scratch of n + 16 floats. y (D) = softmax(q.k * scale) v.
void attend(const float* q, const float* k, const float* v, const bool* valid, int64_t n, int64_t D,
            float scale, float* scores, float* y) {
  const int64_t Dv = D / 16;
  __m512 qv[16];
  for (int64_t d = 0; d < Dv; ++d) qv[d] = _mm512_mul_ps(_mm512_loadu_ps(q + 16 * d), _mm512_set1_ps(scale));
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  __m512 vmax = neg_inf;
  alignas(64) __m512 park[16];
  for (int64_t j0 = 0; j0 < n; j0 += 16) {  // scores, 16 keys at a time
    const int64_t cnt = std::min<int64_t>(16, n - j0);
    for (int64_t c = 0; c < 16; ++c) {
      __m512 acc = _mm512_setzero_ps();
      if (c < cnt) {
        const float* kj = k + (j0 + c) * D;
        for (int64_t d = 0; d < Dv; ++d) acc = _mm512_fmadd_ps(qv[d], _mm512_loadu_ps(kj + 16 * d), acc);
      }
      park[c] = acc;
    }
    __m512 s = hsum16(park);
    __mmask16 ok = 0;
    for (int64_t c = 0; c < cnt; ++c) ok |= static_cast<__mmask16>(valid[j0 + c] ? 1u << c : 0u);
    s = _mm512_mask_blend_ps(ok, neg_inf, s);
    vmax = _mm512_max_ps(vmax, s);
    _mm512_storeu_ps(scores + j0, s);
  }
  const float m = _mm512_reduce_max_ps(vmax);
  const __m512 mv = _mm512_set1_ps(m);
  __m512 vsum = _mm512_setzero_ps();
  for (int64_t j0 = 0; j0 < n; j0 += 16) {  // probabilities (unnormalised); lanes past n are -inf -> 0
    const __m512 e = exp_neg(_mm512_sub_ps(_mm512_loadu_ps(scores + j0), mv));
    const __mmask16 live = _mm512_cmp_ps_mask(_mm512_loadu_ps(scores + j0), neg_inf, _CMP_NEQ_OQ);
    const __m512 p = _mm512_maskz_mov_ps(live, e);
    vsum = _mm512_add_ps(vsum, p);
    _mm512_storeu_ps(scores + j0, p);
  }
  __m512 acc[16];
  for (int64_t d = 0; d < Dv; ++d) acc[d] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const __m512 p = _mm512_set1_ps(scores[j]);
    const float* vj = v + j * D;
    for (int64_t d = 0; d < Dv; ++d) acc[d] = _mm512_fmadd_ps(p, _mm512_loadu_ps(vj + 16 * d), acc[d]);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
  for (int64_t d = 0; d < Dv; ++d) _mm512_storeu_ps(y + 16 * d, _mm512_mul_ps(acc[d], inv));
}
}  // namespace avx512
#pragma GCC pop_options

// AVX2 + FMA: 8 floats per register, the same tiling idea with fewer registers (16), any K.
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Columns [n0, n1) of rows [0, M) of y, C columns at a time: each vector of C weight rows is
// loaded once and multiplied with every row of x (M x C accumulators), with the same software
// prefetch as the AVX-512 kernel; one horizontal sum per column at the end. Any K (a scalar tail).
template <int M, int C>
void block(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t n0,
           int64_t n1) {
  const int64_t Kv = K - K % 8;
  int64_t n = n0;
  for (; n + C <= n1; n += C) {
    const float* wn = w + n * K;
    __m256 acc[M][C];
    for (int m = 0; m < M; ++m)
      for (int c = 0; c < C; ++c) acc[m][c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < Kv; k += 8) {
      __m256 wv[C];
      for (int c = 0; c < C; ++c) {
        wv[c] = _mm256_loadu_ps(wn + c * K + k);
        _mm_prefetch(reinterpret_cast<const char*>(wn + (PREFETCH + c) * K + k), _MM_HINT_T0);
      }
      for (int m = 0; m < M; ++m) {
        const __m256 xv = _mm256_loadu_ps(x + m * K + k);
        for (int c = 0; c < C; ++c) acc[m][c] = _mm256_fmadd_ps(xv, wv[c], acc[m][c]);
      }
    }
    for (int m = 0; m < M; ++m)
      for (int c = 0; c < C; ++c) {
        float s = hsum(acc[m][c]);
        for (int64_t k = Kv; k < K; ++k) s += x[m * K + k] * wn[c * K + k];
        y[m * N + n + c] = s;
      }
  }
  if constexpr (C > 1) {
    if (n < n1) block<M, 1>(x, w, y, K, N, n, n1);  // the last (n1 - n0) % C columns
  }
}

void rows(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n0,
          int64_t n1) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) block<8, 1>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m + 4 <= M; m += 4) block<4, 2>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m + 2 <= M; m += 2) block<2, 4>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m < M; ++m) block<1, 4>(x + m * K, w, y + m * N, K, N, n0, n1);
}

// exp(x) for x <= 0, as avx512::exp_neg: 2^k e^r, Taylor to r^7; 2^k built in the exponent bits.
inline __m256 exp_neg(__m256 x) {
  const __m256 log2e = _mm256_set1_ps(1.44269504f), ln2 = _mm256_set1_ps(0.693147181f);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 r = _mm256_fnmadd_ps(k, ln2, x);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// avx512::attend with 8-float vectors and one horizontal sum per key; D % 8 == 0, D <= 256.
void attend(const float* q, const float* k, const float* v, const bool* valid, int64_t n, int64_t D,
            float scale, float* scores, float* y) {
  const int64_t Dv = D / 8;
  __m256 qv[32];
  for (int64_t d = 0; d < Dv; ++d) qv[d] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * d), _mm256_set1_ps(scale));
  float m = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    if (!valid[j]) {
      scores[j] = -INFINITY;
      continue;
    }
    const float* kj = k + j * D;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t d = 0; d < Dv; ++d) acc = _mm256_fmadd_ps(qv[d], _mm256_loadu_ps(kj + 8 * d), acc);
    scores[j] = hsum(acc);
    m = std::max(m, scores[j]);
  }
  const __m256 mv = _mm256_set1_ps(m), neg_inf = _mm256_set1_ps(-INFINITY);
  __m256 vsum = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {  // probabilities (unnormalised); masked keys are -inf -> 0
    const __m256 sc = _mm256_loadu_ps(scores + j);
    const __m256 p = _mm256_and_ps(exp_neg(_mm256_sub_ps(sc, mv)), _mm256_cmp_ps(sc, neg_inf, _CMP_NEQ_OQ));
    vsum = _mm256_add_ps(vsum, p);
    _mm256_storeu_ps(scores + j, p);
  }
  float sum = hsum(vsum);
  for (; j < n; ++j) {
    scores[j] = valid[j] ? std::exp(scores[j] - m) : 0.0f;
    sum += scores[j];
  }
  __m256 acc[32];
  for (int64_t d = 0; d < Dv; ++d) acc[d] = _mm256_setzero_ps();
  for (j = 0; j < n; ++j) {
    const __m256 p = _mm256_set1_ps(scores[j]);
    const float* vj = v + j * D;
    for (int64_t d = 0; d < Dv; ++d) acc[d] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vj + 8 * d), acc[d]);
  }
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (int64_t d = 0; d < Dv; ++d) _mm256_storeu_ps(y + 8 * d, _mm256_mul_ps(acc[d], inv));
}

// as avx512::rms_norm
void rms_norm(const float* x, const float* weight, float* out, int64_t R, int64_t d, float eps) {
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = x + r * d;
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
      const __m256 v = _mm256_loadu_ps(xr + i);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum(acc);
    for (; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (i = 0; i < d; ++i) out[r * d + i] = xr[i] * inv * weight[i];
  }
}

// as avx512::silu_mul
void silu_mul(const float* gate, const float* up, float* u, int64_t count) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 a = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_neg(_mm256_or_ps(a, sign));  // exp(-|a|)
    const __m256 inv = _mm256_div_ps(one, _mm256_add_ps(one, e));
    const __m256 sig = _mm256_blendv_ps(inv, _mm256_mul_ps(inv, e), _mm256_cmp_ps(a, zero, _CMP_LT_OQ));
    _mm256_storeu_ps(u + i, _mm256_mul_ps(_mm256_mul_ps(a, sig), _mm256_loadu_ps(up + i)));
  }
  for (; i < count; ++i) u[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}
}  // namespace avx2
#pragma GCC pop_options
#endif  // VP_X86

// Floats per vector register of the kernels this CPU runs; 0: none (use PyTorch's ops).
// VIDEOPOET_KERNELS_WIDTH=8 picks the AVX2 kernels on an AVX-512 CPU (tests run them that way).
int64_t vector_width() {
#ifdef VP_X86
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* force = std::getenv("VIDEOPOET_KERNELS_WIDTH");
  if (force != nullptr && std::strcmp(force, "8") == 0 && avx2) return 8;
  if (__builtin_cpu_supports("avx512f")) return 16;
  if (avx2) return 8;
#endif
  return 0;
}

using Attend = void (*)(const float*, const float*, const float*, const bool*, int64_t, int64_t, float,
                        float*, float*);

// The attention kernel for head size D: AVX-512 for D % 16 == 0, AVX2 for D % 8 == 0, D <= 256.
Attend pick_attend(int64_t width, int64_t D) {
#ifdef VP_X86
  if (D > 256) return nullptr;
  if (width == 16 && D % 16 == 0) return avx512::attend;
  if (width >= 8 && D % 8 == 0) return avx2::attend;
#endif
  return nullptr;
}

Kernel pick(int64_t width, int64_t K) {
#ifdef VP_X86
  if (width == 16 && K % 16 == 0) return avx512::rows;
  if (width >= 8) return avx2::rows;
#endif
  return nullptr;
}

at::Tensor small_linear(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "small_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat,
              "small_linear: float32 only");
  TORCH_CHECK(w.dim() == 2 && x.dim() >= 1 && x.size(-1) == w.size(1),
              "small_linear: x (..., K) and w (N, K) expected, got ", x.sizes(), " and ", w.sizes());
  const int64_t K = w.size(1), N = w.size(0);
  at::Tensor xc = x.reshape({-1, K}).contiguous();
  at::Tensor wc = w.contiguous();
  const int64_t M = xc.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y.view(shape);
  static const int64_t width = vector_width();
  const Kernel kernel = pick(width, K);
  TORCH_CHECK(kernel != nullptr, "small_linear: no kernel for this CPU (see small_linear_width)");
  const float* xp = xc.const_data_ptr<float>();
  const float* wp = wc.const_data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // tasks of whole 16-column groups (the AVX-512 kernel reduces 16 columns at a time), at least
  // ~32K multiply-adds per row each, so a thread's share is worth waking it for
  const int64_t groups = (N + 15) / 16;
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(K, 1));
  at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
    kernel(xp, wp, yp, M, K, N, g0 * 16, std::min(g1 * 16, N));
  });
  return y.view(shape);
}

// One decoding step's attention: q (R, H, D) against the first n slots of the caches k, v
// (R, Hkv, L, D), n = valid.size(1), valid (R, n) the key validity (padding) -> (R, H, D).
// Query heads are grouped onto key/value heads (H a multiple of Hkv). Reads each cached key and
// value once per query head; the softmax never leaves a per-head scratch of n floats.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& valid) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 4 && v.sizes() == k.sizes() && valid.dim() == 2,
              "decode_attention: q (R, H, D), k and v (R, Hkv, L, D), valid (R, n) expected");
  const int64_t R = q.size(0), H = q.size(1), D = q.size(2), Hkv = k.size(1), L = k.size(2);
  const int64_t n = valid.size(1);
  TORCH_CHECK(k.size(0) == R && k.size(3) == D && valid.size(0) == R && n <= L && n >= 1 &&
                  H % Hkv == 0,
              "decode_attention: shapes q ", q.sizes(), " k ", k.sizes(), " valid ", valid.sizes());
  const Attend attend = pick_attend(vector_width(), D);
  TORCH_CHECK(attend != nullptr, "decode_attention: no kernel for head size ", D,
              " on this CPU (AVX-512: a multiple of 16, AVX2: of 8, at most 256)");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat && valid.scalar_type() == at::kBool,
              "decode_attention: float32 q, k, v and bool valid");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous() && valid.stride(1) == 1,
              "decode_attention: contiguous caches and valid rows");
  at::Tensor qc = q.contiguous();
  at::Tensor y = at::empty({R, H, D}, q.options());
  const float* qp = qc.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  const bool* mp = valid.const_data_ptr<bool>();
  const int64_t ms = valid.stride(0);
  float* yp = y.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t rep = H / Hkv;
  at::parallel_for(0, R * H, 1, [&](int64_t a, int64_t b) {
    std::vector<float> scores(n + 16);
    for (int64_t i = a; i < b; ++i) {
      const int64_t r = i / H, h = i % H, g = h / rep;
      const int64_t base = (r * Hkv + g) * L * D;
      attend(qp + i * D, kp + base, vp + base, mp + r * ms, n, D, scale, scores.data(), yp + i * D);
    }
  });
  return y;
}


// ---- decode_layers: every transformer block of one decoding step in one call ---------------------
//
// A compiled decoding step at one row still made ~60 separate calls per token (a matrix-vector
// product, a fused elementwise kernel, the attention, ...), each its own OpenMP fork and join
// plus the framework's per-call work (output allocation, argument checks), and MKL ran its
// one-row products on a single thread there: profiled at batch 1 on two threads, the second
// thread spent ~30% of its time waiting. Here one parallel region runs all the blocks: the
// threads split each matrix by 16-column groups (both stream their share of the weights at the
// same time) and meet at a barrier between the phases that need each other's results (five per
// block). The RMSNorms are recomputed by every thread (a few hundred floats per row), so they
// need no barrier of their own.

#ifdef VP_X86
#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
// norm(x) * weight for R rows of d floats (x, out row stride d).
inline void rms_norm(const float* x, const float* weight, float* out, int64_t R, int64_t d, float eps) {
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = x + r * d;
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
      const __m512 v = _mm512_loadu_ps(xr + i);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    float ss = _mm512_reduce_add_ps(acc);
    for (; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
    for (i = 0; i < d; ++i) out[r * d + i] = xr[i] * inv * weight[i];
  }
}

// u[i] = silu(gate[i]) * up[i] for i < count; silu(a) = a sigmoid(a), the sigmoid from
// e = exp(-|a|) <= 1 (exp_neg's range): 1 / (1 + e) for a >= 0, e / (1 + e) below.
inline void silu_mul(const float* gate, const float* up, float* u, int64_t count) {
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512 a = _mm512_loadu_ps(gate + i);
    const __m512 e = exp_neg(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(a)));
    const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    const __mmask16 neg = _mm512_cmp_ps_mask(a, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 sig = _mm512_mask_mul_ps(inv, neg, inv, e);
    _mm512_storeu_ps(u + i, _mm512_mul_ps(_mm512_mul_ps(a, sig), _mm512_loadu_ps(up + i)));
  }
  for (; i < count; ++i) u[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}
}  // namespace avx512
#pragma GCC pop_options

// Rotary embedding, rotate-half convention with sign-folded sin (videopoet/lm/model.py):
// out[i] = x[i] cos[i] + x[(i + D/2) mod D] sin[i].
inline void rotate(const float* x, const float* cos, const float* sin, float* out, int64_t D) {
  const int64_t h = D / 2;
  for (int64_t i = 0; i < D; ++i) out[i] = x[i] * cos[i] + x[i < h ? i + h : i - h] * sin[i];
}

// x[r, c] += o[r, c] for the columns [c0, c1) of R rows (row stride d)
inline void add_columns(float* x, const float* o, int64_t R, int64_t d, int64_t c0, int64_t c1) {
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = c0; c < c1; ++c) x[r * d + c] += o[r * d + c];
}

// [lo, hi) of `count` items for thread t of nt (contiguous, sizes differing by at most one)
inline std::pair<int64_t, int64_t> share(int64_t count, int t, int nt) {
  return {count * t / nt, count * (t + 1) / nt};
}

struct BlockWeights {
  const float *attn_norm, *wqkv, *wo, *mlp_norm, *w13, *w2;
  float *k, *v;
};
#endif

// x (R, d): the embedded tokens of one decoding step at position pos = n - 1, n = valid.size(1).
// weights: per block attn_norm (d), wqkv ((H + 2 Hkv) D, d), wo (d, H D), mlp_norm (d),
// w13 (2 h, d), w2 (d, h), then the final norm (d); caches: per block k, v (R, Hkv, L, D), written
// at pos; valid (R, n): key validity; cos, sin (>= n, 1, D): the rotary tables. Returns the
// final-normed hidden states (R, d), or with `head` (V, d) the logits (R, V) (the head's columns
// split between the threads like the blocks' matrices). Each block is x += attn(norm(x)) then
// x += mlp(norm(x)), exactly as PrefixLM (up to float summation order).
at::Tensor decode_layers(const at::Tensor& x_in, at::TensorList weights, at::TensorList caches,
                         const at::Tensor& valid, const at::Tensor& cos, const at::Tensor& sin,
                         double eps, int64_t n_heads, const std::optional<at::Tensor>& head) {
  const int64_t width = vector_width();
  TORCH_CHECK(width >= 8, "decode_layers: needs AVX2 + FMA or AVX-512");
  const int64_t nl = static_cast<int64_t>(caches.size()) / 2;
  TORCH_CHECK(nl >= 1 && static_cast<int64_t>(caches.size()) == 2 * nl &&
                  static_cast<int64_t>(weights.size()) == 6 * nl + 1,
              "decode_layers: 6 weights per block plus the final norm, and 2 caches per block; got ",
              weights.size(), " weights and ", caches.size(), " caches");
  TORCH_CHECK(x_in.dim() == 2 && valid.dim() == 2 && valid.size(0) == x_in.size(0),
              "decode_layers: x (R, d) and valid (R, n) expected, got ", x_in.sizes(), " and ",
              valid.sizes());
  const int64_t R = x_in.size(0), d = x_in.size(1), n = valid.size(1);
  const at::Tensor& k0 = caches[0];
  TORCH_CHECK(k0.dim() == 4 && k0.size(0) == R, "decode_layers: caches (R, Hkv, L, D) expected, got ",
              k0.sizes());
  const int64_t Hkv = k0.size(1), L = k0.size(2), D = k0.size(3), H = n_heads;
  TORCH_CHECK(H >= 1 && H % Hkv == 0 && n >= 1 && n <= L,
              "decode_layers: ", H, " heads, caches ", k0.sizes(), ", ", n, " valid slots");
  const Attend attend = pick_attend(width, D);
  TORCH_CHECK(attend != nullptr, "decode_layers: no attention kernel for head size ", D);
  const int64_t Nqkv = (H + 2 * Hkv) * D, HD = H * D;
  const int64_t hid = weights[4].size(0) / 2;
  auto check = [](const at::Tensor& t, at::IntArrayRef shape, const char* what) {
    TORCH_CHECK(t.sizes() == shape, "decode_layers: ", what, " has shape ", t.sizes(), ", expected ",
                shape);
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
                "decode_layers: ", what, " must be a contiguous float32 CPU tensor");
  };
  check(x_in, {R, d}, "x");
  for (int64_t l = 0; l < nl; ++l) {
    check(weights[6 * l], {d}, "attn_norm");
    check(weights[6 * l + 1], {Nqkv, d}, "wqkv");
    check(weights[6 * l + 2], {d, HD}, "wo");
    check(weights[6 * l + 3], {d}, "mlp_norm");
    check(weights[6 * l + 4], {2 * hid, d}, "w13");
    check(weights[6 * l + 5], {d, hid}, "w2");
    check(caches[2 * l], {R, Hkv, L, D}, "k cache");
    check(caches[2 * l + 1], {R, Hkv, L, D}, "v cache");
  }
  check(weights[6 * nl], {d}, "final norm");
  const bool with_head = head.has_value() && head->defined();
  const int64_t V = with_head ? head->size(0) : 0;
  if (with_head) check(*head, {V, d}, "head");
  TORCH_CHECK(valid.scalar_type() == at::kBool && valid.stride(1) == 1,
              "decode_layers: valid must be bool with contiguous rows");
  TORCH_CHECK(cos.dim() == 3 && cos.size(0) >= n && cos.size(2) == D && cos.is_contiguous() &&
                  sin.sizes() == cos.sizes() && sin.is_contiguous() &&
                  cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat,
              "decode_layers: rotary tables (>= n, 1, D) float32 expected, got ", cos.sizes());
  at::Tensor x = x_in.clone();  // the residual stream, updated in place, normed at the end
  at::Tensor logits = with_head ? at::empty({R, V}, x.options()) : at::Tensor();
#ifdef VP_X86
  const int64_t pos = n - 1;
  const int nt = std::max(1, at::get_num_threads());
  // scratch: qkv (R, Nqkv), attention output (R, HD), projection output (R, d), gate|up (R, 2 hid),
  // silu(gate) * up (R, hid); per thread: normed x (R, d), rotated query (D), scores (n + 16)
  const int64_t per_thread = R * d + D + n + 16;
  at::Tensor scratch = at::empty({R * (Nqkv + HD + d + 3 * hid) + nt * per_thread}, x.options());
  float* qkv = scratch.data_ptr<float>();
  float* y = qkv + R * Nqkv;
  float* o = y + R * HD;
  float* g = o + R * d;
  float* u = g + R * 2 * hid;
  float* priv = u + R * hid;
  std::vector<BlockWeights> blocks(nl);
  for (int64_t l = 0; l < nl; ++l)
    blocks[l] = {weights[6 * l].const_data_ptr<float>(),     weights[6 * l + 1].const_data_ptr<float>(),
                 weights[6 * l + 2].const_data_ptr<float>(), weights[6 * l + 3].const_data_ptr<float>(),
                 weights[6 * l + 4].const_data_ptr<float>(), weights[6 * l + 5].const_data_ptr<float>(),
                 caches[2 * l].data_ptr<float>(),            caches[2 * l + 1].data_ptr<float>()};
  const float* final_norm = weights[6 * nl].const_data_ptr<float>();
  const float* hp = with_head ? head->const_data_ptr<float>() : nullptr;
  float* lp = with_head ? logits.data_ptr<float>() : nullptr;
  const float* cp = cos.const_data_ptr<float>() + pos * D;
  const float* sp = sin.const_data_ptr<float>() + pos * D;
  const bool* mp = valid.const_data_ptr<bool>();
  const int64_t ms = valid.stride(0);
  float* xp = x.data_ptr<float>();
  const float feps = static_cast<float>(eps), scale = 1.0f / std::sqrt(static_cast<float>(D));
  const int64_t rep = H / Hkv;
  const Kernel mm_d = pick(width, d), mm_hd = pick(width, HD), mm_hid = pick(width, hid);
  const bool wide = width == 16;
  const auto rms_norm = wide ? avx512::rms_norm : avx2::rms_norm;
  const auto silu_mul = wide ? avx512::silu_mul : avx2::silu_mul;
  const int64_t g_qkv = (Nqkv + 15) / 16, g_d = (d + 15) / 16, g_hid = (hid + 15) / 16;

#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
#else
    const int t = 0, T = 1;
#endif
    float* xn = priv + t * per_thread;
    float* qrot = xn + R * d;
    float* scores = qrot + D;
    const auto [c0, c1] = share(g_qkv, t, T);
    const auto [e0, e1] = share(g_d, t, T);
    const auto [h0, h1] = share(g_hid, t, T);
    const auto [p0, p1] = share(R * Hkv, t, T);
    const int64_t qa = c0 * 16, qb = std::min(c1 * 16, Nqkv);
    const int64_t da = e0 * 16, db = std::min(e1 * 16, d);
    const int64_t ha = h0 * 16, hb = std::min(h1 * 16, hid);
    for (int64_t l = 0; l < nl; ++l) {
      const BlockWeights& b = blocks[l];
      rms_norm(xp, b.attn_norm, xn, R, d, feps);
      mm_d(xn, b.wqkv, qkv, R, d, Nqkv, qa, qb);
#pragma omp barrier
      for (int64_t p = p0; p < p1; ++p) {  // one (row, kv head) pair: its cache slot, its queries
        const int64_t r = p / Hkv, kh = p % Hkv;
        const float* row = qkv + r * Nqkv;
        float* kc = b.k + (r * Hkv + kh) * L * D;
        float* vc = b.v + (r * Hkv + kh) * L * D;
        rotate(row + (H + kh) * D, cp, sp, kc + pos * D, D);
        std::memcpy(vc + pos * D, row + (H + Hkv + kh) * D, D * sizeof(float));
        for (int64_t h = kh * rep; h < (kh + 1) * rep; ++h) {
          rotate(row + h * D, cp, sp, qrot, D);
          attend(qrot, kc, vc, mp + r * ms, n, D, scale, scores, y + r * HD + h * D);
        }
      }
#pragma omp barrier
      mm_hd(y, b.wo, o, R, HD, d, da, db);
      add_columns(xp, o, R, d, da, db);
#pragma omp barrier
      rms_norm(xp, b.mlp_norm, xn, R, d, feps);
      mm_d(xn, b.w13, g, R, d, 2 * hid, ha, hb);  // gate columns [ha, hb)
      mm_d(xn, b.w13, g, R, d, 2 * hid, hid + ha, hid + hb);  // and the matching up columns
      for (int64_t r = 0; r < R; ++r)
        silu_mul(g + r * 2 * hid + ha, g + r * 2 * hid + hid + ha, u + r * hid + ha, hb - ha);
#pragma omp barrier
      mm_hid(u, b.w2, o, R, hid, d, da, db);
      add_columns(xp, o, R, d, da, db);
#pragma omp barrier
    }
    if (with_head) {  // every thread norms all rows (no barrier), then its share of the head
      rms_norm(xp, final_norm, xn, R, d, feps);
      const auto [v0, v1] = share((V + 15) / 16, t, T);
      mm_d(xn, hp, lp, R, d, V, v0 * 16, std::min(v1 * 16, V));
    } else {
      const auto [r0, r1] = share(R, t, T);
      for (int64_t r = r0; r < r1; ++r) {  // the final norm, in place, a row per thread
        rms_norm(xp + r * d, final_norm, xn, 1, d, feps);
        std::memcpy(xp + r * d, xn, d * sizeof(float));
      }
    }
  }
#endif
  return with_head ? logits : x;
}

}  // namespace

TORCH_LIBRARY(videopoet, m) {
  m.def("small_linear(Tensor x, Tensor w) -> Tensor");
  m.def("small_linear_width() -> int", &vector_width);
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor valid) -> Tensor");
  m.def(
      "decode_layers(Tensor x, Tensor[] weights, Tensor(a!)[] caches, Tensor valid, Tensor cos, "
      "Tensor sin, float eps, int n_heads, Tensor? head=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(videopoet, CPU, m) {
  m.impl("small_linear", &small_linear);
  m.impl("decode_attention", &decode_attention);
  m.impl("decode_layers", &decode_layers);
}
