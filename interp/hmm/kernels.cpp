// Compiled CPU kernels for the emission-form forward filter (built and loaded by interp/hmm/native.py).
//
// T[x, i, j] = C[i, x] A[i, j] ("source") or A[i, j] C[j, x] ("destination"); one filter step is
//   source:       u = (eta * C[:, x]) @ A,  z = sum(u),  eta' = u / z
//   destination:  u = (eta @ A) * C[:, x],  z = sum(u),  eta' = u / z
// with z = P(x | past). An impossible token gives z = 0 and NaN beliefs from then on (1 / 0 = inf,
// 0 * inf = NaN), as the torch filter does: build without -ffast-math.
//
// The OpenMP regions run on the caller's OpenMP runtime: native.py links torch's own libgomp, so these
// kernels and torch's operations share one thread pool instead of two competing for the cores.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>
#include <omp.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

namespace {

// dst[0 .. count) = src[0 .. count) with streaming (non-temporal) stores where the CPU has them: beliefs
// are written once and read much later, and a plain store first reads each line into the cache (a
// measurable share of the filter at S = 256; docs/benchmarks.md).
inline void stream_copy(double* dst, const double* src, int64_t count) {
  int64_t i = 0;
#if defined(__AVX512F__)
  constexpr int64_t kLanes = 8;
#elif defined(__AVX__)
  constexpr int64_t kLanes = 4;
#elif defined(__SSE2__)
  constexpr int64_t kLanes = 2;
#endif
#if defined(__SSE2__)
  for (; i < count && reinterpret_cast<uintptr_t>(dst + i) % (8 * kLanes) != 0; ++i) dst[i] = src[i];
  for (; i + kLanes <= count; i += kLanes) {
#if defined(__AVX512F__)
    _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
#elif defined(__AVX__)
    _mm256_stream_pd(dst + i, _mm256_loadu_pd(src + i));
#else
    _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
#endif
  }
#endif
  for (; i < count; ++i) dst[i] = src[i];
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // streaming stores are weakly ordered: publish them before the region ends
#endif
}

constexpr int64_t kBlock = 256;  // sequences filtered together; their (S, kBlock) beliefs stay in cache
constexpr int64_t kSpan = 64;    // positions whose tokens are transposed at a time (bounded scratch at any L)

// dst = src @ A for the m sequences of a block, both stored state-major ((S, kBlock), row i = state i).
inline void times_A(const double* src, const double* A, int64_t S, int64_t m, double* dst) {
  for (int64_t j = 0; j < S; ++j) {
    double* dj = dst + j * kBlock;
    for (int64_t r = 0; r < m; ++r) dj[r] = 0.0;
    for (int64_t i = 0; i < S; ++i) {
      const double a = A[i * S + j];
      const double* si = src + i * kBlock;
#pragma omp simd
      for (int64_t r = 0; r < m; ++r) dj[r] += si[r] * a;
    }
  }
}

// Filter sequences r0 .. r0 + m - 1 through all L positions. SS > 0 fixes S at compile time.
template <int SS>
void filter_block(const int64_t* tokens, const double* initial, const double* A, const double* w,
                  const double* C, int64_t V, bool source, double* beliefs, double* norms, int64_t n,
                  int64_t L, int64_t S_runtime, int64_t r0, int64_t m, double* B, double* U, double* z,
                  int64_t* X) {
  const int64_t S = SS > 0 ? SS : S_runtime;
  for (int64_t i = 0; i < S; ++i)
    for (int64_t r = 0; r < m; ++r) B[i * kBlock + r] = initial[i];

  for (int64_t t = 0; t < L; ++t) {
    if (t % kSpan == 0) {  // the block's tokens for the next kSpan positions, time-major
      const int64_t span = std::min(kSpan, L - t);
      for (int64_t r = 0; r < m; ++r)
        for (int64_t k = 0; k < span; ++k) X[k * kBlock + r] = tokens[(r0 + r) * L + t + k];
    }
    const int64_t* x = X + (t % kSpan) * kBlock;
    for (int64_t r = 0; r < m; ++r) z[r] = 0.0;
    if (source) {
      for (int64_t i = 0; i < S; ++i) {  // u = eta * C[:, x], normaliser (u @ A) @ 1 = u @ w
        const double* Ci = C + i * V;
        const double wi = w[i];
        double* Bi = B + i * kBlock;
        double* Ui = U + i * kBlock;
#pragma omp simd
        for (int64_t r = 0; r < m; ++r) {
          const double v = Bi[r] * Ci[x[r]];
          Ui[r] = v;
          z[r] += v * wi;
        }
      }
      times_A(U, A, S, m, B);  // eta' = u @ A (scaled below)
    } else {
      times_A(B, A, S, m, U);  // u = eta @ A
      for (int64_t j = 0; j < S; ++j) {  // eta' = u * C[:, x] (scaled below)
        const double* Cj = C + j * V;
        const double* Uj = U + j * kBlock;
        double* Bj = B + j * kBlock;
#pragma omp simd
        for (int64_t r = 0; r < m; ++r) {
          const double v = Uj[r] * Cj[x[r]];
          Bj[r] = v;
          z[r] += v;
        }
      }
    }
    double* norms_t = norms + t * n + r0;
    for (int64_t r = 0; r < m; ++r) {
      norms_t[r] = z[r];
      z[r] = 1.0 / z[r];
    }
    for (int64_t j = 0; j < S; ++j) {
      double* Bj = B + j * kBlock;
#pragma omp simd
      for (int64_t r = 0; r < m; ++r) Bj[r] *= z[r];
    }
    if (beliefs != nullptr) {  // (S, m) block -> the (m, S) rows of position t, through U as staging
      for (int64_t r = 0; r < m; ++r)
        for (int64_t j = 0; j < S; ++j) U[r * S + j] = B[j * kBlock + r];
      stream_copy(beliefs + (t * n + r0) * S, U, m * S);
    }
  }
}

using BlockFn = void (*)(const int64_t*, const double*, const double*, const double*, const double*, int64_t,
                         bool, double*, double*, int64_t, int64_t, int64_t, int64_t, int64_t, double*, double*,
                         double*, int64_t*);

BlockFn block_fn(int64_t S) {
  switch (S) {
    case 2: return filter_block<2>;
    case 3: return filter_block<3>;
    case 4: return filter_block<4>;
    case 5: return filter_block<5>;
    case 6: return filter_block<6>;
    default: return filter_block<0>;
  }
}

// dst = src @ A for one belief stored as a contiguous row.
inline void row_times_A(const double* src, const double* A, int64_t S, double* dst) {
  for (int64_t j = 0; j < S; ++j) dst[j] = 0.0;
  for (int64_t i = 0; i < S; ++i) {
    const double si = src[i];
    const double* Ai = A + i * S;
#pragma omp simd
    for (int64_t j = 0; j < S; ++j) dst[j] += si * Ai[j];
  }
}

// One sequence through all L positions with its belief as one contiguous row, vectorised across states:
// for a few sequences of a larger HMM, where a block has too few sequences to fill the vector lanes.
void filter_one(const int64_t* tokens, const double* initial, const double* A, const double* w,
                const double* CT, bool source, double* beliefs, double* norms, int64_t n, int64_t L, int64_t S,
                int64_t r, double* b, double* u) {
  for (int64_t i = 0; i < S; ++i) b[i] = initial[i];
  for (int64_t t = 0; t < L; ++t) {
    const double* c = CT + tokens[r * L + t] * S;  // P(x_t | state)
    double z = 0.0;
    if (source) {  // u = eta * c, eta' = u @ A / z with z = u @ w
#pragma omp simd reduction(+ : z)
      for (int64_t i = 0; i < S; ++i) {
        u[i] = b[i] * c[i];
        z += u[i] * w[i];
      }
      row_times_A(u, A, S, b);
    } else {  // u = eta @ A, eta' = u * c / z with z = sum(u * c)
      row_times_A(b, A, S, u);
#pragma omp simd reduction(+ : z)
      for (int64_t j = 0; j < S; ++j) {
        b[j] = u[j] * c[j];
        z += b[j];
      }
    }
    norms[t * n + r] = z;
    const double inv = 1.0 / z;
#pragma omp simd
    for (int64_t j = 0; j < S; ++j) b[j] *= inv;
    if (beliefs != nullptr)
      for (int64_t j = 0; j < S; ++j) beliefs[(t * n + r) * S + j] = b[j];
  }
}

// Below this many sequences an HMM of at least this many states runs filter_one per sequence.
constexpr int64_t kRowwiseMaxSequences = 8;
constexpr int64_t kRowwiseMinStates = 8;

// ---------------------------------------------------------------------------- block-sparse filter
// interp/hmm/blocked.py: a belief lives on the k states of one group, and a step multiplies it by one of the
// P = G d (group, move) blocks (k, k). Rows are batched per block across positions (fixed-order passes, below),
// so a block read from memory serves more rows than one position's sequences give it.

// A register tile of 6 rows x kVectors vectors of accumulators (docs/benchmarks.md): with 32 vector registers
// (AVX-512) 6 x 4 beat 4 x 4, 8 x 2, 12 x 2 and 8 x 3; with 16 (AVX2, SSE2) 24 accumulators spill, and 6 x 2 (as
// BLIS's Haswell kernel) ran 1.25x faster than 6 x 4.
#if defined(__AVX512F__)
constexpr int64_t kLanes = 8, kVectors = 4;
#elif defined(__AVX__)
constexpr int64_t kLanes = 4, kVectors = 2;
#else
constexpr int64_t kLanes = 2, kVectors = 2;
#endif
constexpr int64_t kPanel = kVectors * kLanes;  // columns of a tile
constexpr int kTileRows = 6;

// out[r][c0 .. c0 + kPanel) = a[r] @ B[:, c0 .. c0 + kPanel) for R rows. Every output sums over i in order,
// whatever R, so a row's result does not depend on the rows it is batched with.
template <int R>
inline void block_tile(const double* const* a, const double* B, int64_t k, int64_t c0, double* const* out) {
  double acc[R][kPanel] = {};
  for (int64_t i = 0; i < k; ++i) {
    const double* b = B + i * k + c0;
    for (int r = 0; r < R; ++r) {
      const double ar = a[r][i];
#pragma omp simd
      for (int64_t j = 0; j < kPanel; ++j) acc[r][j] += ar * b[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < kPanel; ++j) out[r][c0 + j] = acc[r][j];
}

// out[r] = a[r] @ B for r < rows (B (k, k) row-major).
void block_product(const double* const* a, const double* B, int64_t k, int64_t rows, double* const* out) {
  const int64_t panels = k / kPanel;
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t c0 = p * kPanel;
    int64_t r = 0;
    for (; r + kTileRows <= rows; r += kTileRows) block_tile<kTileRows>(a + r, B, k, c0, out + r);
    if (kTileRows > 4 && r + 4 <= rows) { block_tile<4>(a + r, B, k, c0, out + r); r += 4; }
    if (kTileRows > 2 && r + 2 <= rows) { block_tile<2>(a + r, B, k, c0, out + r); r += 2; }
    for (; r < rows; ++r) block_tile<1>(a + r, B, k, c0, out + r);
  }
  for (int64_t r = 0; r < rows; ++r)  // the columns past the last whole panel
    for (int64_t c = panels * kPanel; c < k; ++c) {
      double s = 0.0;
      for (int64_t i = 0; i < k; ++i) s += a[r][i] * B[i * k + c];
      out[r][c] = s;
    }
}

// post = u * emission row; z = sum * weight; log_z = log z; post /= sum (0 where z = 0, as the torch filter).
// post may be u. The sum is vectorised (a fixed order for a given build; with a serial sum this took a fifth of the
// filter's time).
inline void block_condition(const double* u, const double* emission, double weight, int64_t k, double* post,
                            double* log_z) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < k; ++j) {
    post[j] = u[j] * emission[j];
    s += post[j];
  }
  const double z = s * weight;
  *log_z = std::log(z);
  const double scale = z > 0 ? 1.0 / std::max(s, std::numeric_limits<double>::min()) : 0.0;
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) post[j] *= scale;
}

}  // namespace

extern "C" {

// The whole filter for n sequences of L tokens (tokens (n, L), row-major, each in [0, V)).
// initial (S,), A (S, S), C (S, V); writes norms (L, n) and, unless null, beliefs (L, n, S).
void interp_filter_small(const int64_t* tokens, const double* initial, const double* A, const double* C,
                         int64_t n, int64_t L, int64_t S, int64_t V, int32_t source, double* beliefs,
                         double* norms, int32_t n_threads) {
  std::vector<double> w(S, 0.0);  // row sums of A: the source side's normaliser weights
  for (int64_t i = 0; i < S; ++i)
    for (int64_t j = 0; j < S; ++j) w[i] += A[i * S + j];
  if (n < kRowwiseMaxSequences && S >= kRowwiseMinStates) {
    std::vector<double> CT(V * S);  // C transposed: row x is P(x | state), contiguous
    for (int64_t i = 0; i < S; ++i)
      for (int64_t x = 0; x < V; ++x) CT[x * S + i] = C[i * V + x];
    const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, n)));
#pragma omp parallel num_threads(threads)
    {
      std::vector<double> b(S), u(S);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < n; ++r)
        filter_one(tokens, initial, A, w.data(), CT.data(), source != 0, beliefs, norms, n, L, S, r, b.data(),
                   u.data());
    }
    return;
  }
  const BlockFn fn = block_fn(S);
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, blocks)));
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> B(S * kBlock), U(S * kBlock), z(kBlock);
    std::vector<int64_t> X(kSpan * kBlock);
#pragma omp for schedule(static) nowait
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kBlock;
      fn(tokens, initial, A, w.data(), C, V, source != 0, beliefs, norms, n, L, S, r0,
         std::min(kBlock, n - r0), B.data(), U.data(), z.data(), X.data());
    }
    stream_fence();
  }
}

// One pass of a step for large S: for every row r, with e = a[r] * table[tokens[r]],
// norm[r] = e @ weights and out[r] = e / norm[r]. a, out (n, S); table (V, S); out may alias a.
// Unless null, copy (n, S) receives a streamed copy of a (copy_input) or of out: the belief of a position
// goes to the result buffer from here, while the step's product and this pass work in cache.
void interp_emit_normalise(const double* a, const double* table, const int64_t* tokens, const double* weights,
                           double* out, double* norm, int64_t n, int64_t S, double* copy, int32_t copy_input,
                           int32_t n_threads) {
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, n)));
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < n; ++r) {
      const double* row = table + tokens[r] * S;
      const double* ar = a + r * S;
      double* o = out + r * S;
      if (copy != nullptr && copy_input) stream_copy(copy + r * S, ar, S);
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < S; ++i) {
        const double v = ar[i] * row[i];
        o[i] = v;
        s += v * weights[i];
      }
      norm[r] = s;
      const double inv = 1.0 / s;
#pragma omp simd
      for (int64_t i = 0; i < S; ++i) o[i] *= inv;
      if (copy != nullptr && !copy_input) stream_copy(copy + r * S, o, S);
    }
    stream_fence();
  }
}

// dst = src (count doubles) with streaming stores.
void interp_stream_copy(const double* src, double* dst, int64_t count, int32_t n_threads) {
  const int64_t chunk = 1 << 16;
  const int64_t chunks = (count + chunk - 1) / chunk;
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, chunks)));
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static) nowait
    for (int64_t c = 0; c < chunks; ++c)
      stream_copy(dst + c * chunk, src + c * chunk, std::min(chunk, count - c * chunk));
    stream_fence();
  }
}

// The block-sparse filter (interp/hmm/blocked.py) for n sequences of L tokens. tokens (n, L); move (n, L - 1):
// the block (g d + e) taking each sequence from position t to t + 1; weight (n, L - 1): that move's probability
// (0 where no move leads there); mu (G, k) with group (n,) the first token's group; blocks (P, k, k); emission
// (V, k): row x is the emission probability of token x from each state of its group; order (P,): a permutation
// of the blocks. Writes log_z (n, L), log P(x_t | x_<t), unless null beliefs (n, L, k), and in calls[0] the number
// of block products it made (n (L - 1) over it: the rows a block read served on average).
//
// Schedule: passes over the blocks in the given order. At a pass's start every unfinished sequence waits at its
// next move's block; taking a block moves its sequences one position on, and each whose next block comes no
// earlier in the order joins it in the same pass (the same block: at once, while it is in cache). An order in
// which most moves go forward (interp/hmm/blocked.py) lets a sequence advance several positions a pass, so a
// block read serves more rows. The threads split a product's rows, whole tiles each, and condition their own
// rows (splitting the columns made each row wait for both halves: 20% slower). A sequence's numbers depend
// neither on the order nor on the rows it is batched with, nor on the thread count: a row's product and
// conditioning depend on that row alone.
void interp_blocked_filter(const int64_t* tokens, const int64_t* move, const double* weight, const double* mu,
                           const int64_t* group, const double* blocks, const double* emission, const int64_t* order,
                           int64_t n, int64_t L, int64_t k, int64_t P, double* log_z, double* beliefs,
                           int64_t* calls, int32_t n_threads) {
  const int threads = std::max(1, static_cast<int>(n_threads));
  calls[0] = 0;
  std::vector<int64_t> rank(P);
  for (int64_t r = 0; r < P; ++r) rank[order[r]] = r;
  std::vector<double> alpha(n * k), out;
  std::vector<int64_t> pos(n, 1), next(n, P);  // P: finished
  for (int64_t s = 0; s < n; ++s) {
    double* a = alpha.data() + s * k;
    for (int64_t j = 0; j < k; ++j) a[j] = mu[group[s] * k + j];
    block_condition(a, emission + tokens[s * L] * k, 1.0, k, a, log_z + s * L);
    if (beliefs != nullptr) std::copy(a, a + k, beliefs + s * L * k);
    if (L > 1) next[s] = move[s * (L - 1)];
  }
  std::vector<std::vector<int64_t>> waiting(P);  // by rank in the order
  std::vector<int64_t> work;
  std::vector<const double*> rows_in;
  std::vector<double*> rows_out;
  for (;;) {
    bool any = false;
    for (int64_t s = 0; s < n; ++s)
      if (next[s] < P) {
        waiting[rank[next[s]]].push_back(s);
        any = true;
      }
    if (!any) break;
    for (int64_t r = 0; r < P; ++r) {
      const int64_t p = order[r];
      while (!waiting[r].empty()) {
        work.swap(waiting[r]);
        waiting[r].clear();
        const int64_t rows = static_cast<int64_t>(work.size());
        ++calls[0];
        if (static_cast<int64_t>(out.size()) < rows * k) out.resize(rows * k);
        rows_in.resize(rows);
        rows_out.resize(rows);
        for (int64_t i = 0; i < rows; ++i) {
          rows_in[i] = alpha.data() + work[i] * k;
          rows_out[i] = out.data() + i * k;
        }
#pragma omp parallel num_threads(threads) if (threads > 1 && rows >= 2 * kTileRows && rows * k * k >= (1 << 19))
        {  // each thread its own rows, whole tiles: the product, then their conditioning while in its cache
          const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
          const int64_t tiles = (rows + kTileRows - 1) / kTileRows;
          const int64_t r0 = std::min(rows, tiles * me / nt * kTileRows);
          const int64_t r1 = std::min(rows, tiles * (me + 1) / nt * kTileRows);
          block_product(rows_in.data() + r0, blocks + p * k * k, k, r1 - r0, rows_out.data() + r0);
          for (int64_t i = r0; i < r1; ++i) {
            const int64_t s = work[i], t = pos[s];
            double* a = alpha.data() + s * k;
            block_condition(rows_out[i], emission + tokens[s * L + t] * k, weight[s * (L - 1) + t - 1], k, a,
                            log_z + s * L + t);
            if (beliefs != nullptr) std::copy(a, a + k, beliefs + (s * L + t) * k);
          }
        }
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t s = work[i], t = pos[s];
          pos[s] = t + 1;
          next[s] = t + 1 < L ? move[s * (L - 1) + t] : P;
          if (next[s] < P && rank[next[s]] >= r) waiting[rank[next[s]]].push_back(s);
        }
      }
    }
  }
}

}  // extern "C"
