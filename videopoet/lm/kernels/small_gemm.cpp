// y (M, N) = x (M, K) @ w (N, K)^T for a few rows M (decoding: one row per sequence), fp32, CPU.
//
// At M <= 16 a decoding step is bound by reading the weights, not by arithmetic. BLAS libraries
// tune for large M: MKL's sgemm packs w into panels on every call (one more pass over the weights)
// and its M = 1 path reached ~80% of the bandwidth of a plain sum here. This kernel reads w once,
// in its natural row-major layout (no packed copy, so it always sees the live weights): each
// output column n is the dot product of w's row n with every row of x, accumulated in vector
// registers over K and reduced once at the end. x (M x K floats, ~1.5-6 KB per row) stays in L1.
//
// Two instruction sets, chosen at run time: AVX-512 (16 floats per register, row tiles of up to
// 16) and AVX2 + FMA (8 floats, tiles of up to 8). Other CPUs (or compilers other than GCC) get
// vector_width() == 0 and the Python side uses PyTorch's linear instead.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VP_X86 1
#include <immintrin.h>
#endif

namespace {

using Kernel = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                        int64_t);

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
#ifndef VP_PREFETCH
#define VP_PREFETCH 4
#endif
constexpr int PREFETCH = VP_PREFETCH;

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
}  // namespace avx512
#pragma GCC pop_options

// AVX2: one column at a time with a horizontal sum per column (K need not be a multiple of 8).
#define VP_BLOCK(VEC, W, ZERO, LOAD, FMA, HSUM)                                                \
  template <int M>                                                                             \
  void block(const float* x, const float* w, float* y, int64_t K, int64_t N, int64_t n0,       \
             int64_t n1) {                                                                     \
    const int64_t Kv = K - K % W;                                                              \
    for (int64_t n = n0; n < n1; ++n) {                                                        \
      const float* wn = w + n * K;                                                             \
      VEC acc[M];                                                                              \
      for (int m = 0; m < M; ++m) acc[m] = ZERO();                                             \
      for (int64_t k = 0; k < Kv; k += W) {                                                    \
        const VEC wv = LOAD(wn + k);                                                           \
        for (int m = 0; m < M; ++m) acc[m] = FMA(LOAD(x + m * K + k), wv, acc[m]);             \
      }                                                                                        \
      for (int m = 0; m < M; ++m) {                                                            \
        float s = HSUM(acc[m]);                                                                \
        for (int64_t k = Kv; k < K; ++k) s += x[m * K + k] * wn[k];                            \
        y[m * N + n] = s;                                                                      \
      }                                                                                        \
    }                                                                                          \
  }

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
VP_BLOCK(__m256, 8, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_fmadd_ps, hsum)

void rows(const float* x, const float* w, float* y, int64_t M, int64_t K, int64_t N, int64_t n0,
          int64_t n1) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) block<8>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m + 4 <= M; m += 4) block<4>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m + 2 <= M; m += 2) block<2>(x + m * K, w, y + m * N, K, N, n0, n1);
  for (; m < M; ++m) block<1>(x + m * K, w, y + m * N, K, N, n0, n1);
}
}  // namespace avx2
#pragma GCC pop_options
#endif  // VP_X86

// Floats per vector register of the kernel this CPU runs; 0: none (use PyTorch's linear).
int64_t vector_width() {
#ifdef VP_X86
  if (__builtin_cpu_supports("avx512f")) return 16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 8;
#endif
  return 0;
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

}  // namespace

TORCH_LIBRARY(videopoet, m) {
  m.def("small_linear(Tensor x, Tensor w) -> Tensor");
  m.def("small_linear_width() -> int", &vector_width);
}

TORCH_LIBRARY_IMPL(videopoet, CPU, m) { m.impl("small_linear", &small_linear); }
