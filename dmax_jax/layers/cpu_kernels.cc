// A decoding forward's matmuls and attention on CPU, as XLA FFI custom calls (float32): `DmaxCpuMatmul` (x @ w for
// a few rows: projections, dense MLPs, LM head), `DmaxCpuRoutedExperts` (a layer's routed SwiGLU experts) and
// `DmaxCpuAttention` (attention to the KV cache and the own keys).
//
// The weight products multiply panel by panel of 64 weight columns, each 4-row register tile summing over all of
// k in registers: the panel's first tile reads it from memory, a fixed number of weight rows prefetched ahead, and
// in wide matrices packs it contiguously; the other tiles read the panel from cache (the packed copy, or in
// place). At decode shapes the cost is reading the weights once at the core's FMA rate; XLA:CPU's dot runs well
// under it for these shapes, and its loop over experts copies each weight matrix out of the stacked array before
// its dot (`looped` in `dmax_jax/layers/moe_ops.py`).
//
// Routed experts: out[t] = sum_a weights[t, a] * (silu(x[t] @ gate[e]) * (x[t] @ up[e])) @ down[e], e = ids[t, a];
// experts without rows are not read. Matmul: column ranges are shared among the threads. Attention: (row, kv head)
// pairs are.
//
// Shapes: matmul x [M, K], w [K, N] -> [M, N], N a multiple of 16. Routed experts x [T, H], ids and weights
// [T, A], gate/up [E, H, F], down [E, F, H] -> out [T, H]; H and F multiples of 16. Attention: see `Attention`.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

inline v16 Load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void Store(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }

// e^x for 16 floats, evaluated in double (x = n ln 2 + r, |r| <= ln 2 / 2, Taylor terms to r^10, times 2^n) and
// rounded once to float: std::exp's result for all but ~0.06% of floats (1 ulp). std::exp is not vectorized without
// -ffast-math; a float polynomial within 1 ulp moved the fixture's SPD confidences by up to 1.04e-4 from the official
// trace (SPD feeds them back), this one by up to 7.6e-5 (XLA's `looped` kernel: 3.3e-5).
inline v16 Exp(v16 x) {
  typedef double v8d __attribute__((vector_size(64)));
  typedef float v8f __attribute__((vector_size(32)));
  typedef int64_t v8l __attribute__((vector_size(64)));
  x = x < -104.0f ? -104.0f : x;  // beyond these e^x is 0 or inf in float
  x = x > 89.0f ? 89.0f : x;
  const auto half_exp = [](v8f xf) {
    const v8d xd = __builtin_convertvector(xf, v8d);
    const v8d magic = v8d{} + 6755399441055744.0;  // 1.5 * 2^52: adding and subtracting it rounds to an integer
    const v8d n = (xd * 1.4426950408889634 + magic) - magic;
    const v8d r = xd - n * 0.6931471805599453;
    v8d p = v8d{} + 1.0 / 3628800;
    for (double c : {1.0 / 362880, 1.0 / 40320, 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5, 1.0, 1.0}) {
      p = p * r + c;
    }
    const v8l bits = (__builtin_convertvector(n, v8l) + 1023) << 52;
    v8d scale;
    __builtin_memcpy(&scale, &bits, sizeof(scale));
    return __builtin_convertvector(p * scale, v8f);
  };
  const v8f lo = half_exp(__builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7));
  const v8f hi = half_exp(__builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// Prefetches a strided run of weight rows, one row (`row_lines` cache lines) per step, `rows` rows in all.
struct Prefetch {
  const char* row;
  int64_t stride, row_lines, rows;
  inline void Step() {
    if (rows <= 0) return;
    for (int64_t q = 0; q < row_lines; ++q) __builtin_prefetch(row + 64 * q, 0, 2);
    row += stride;
    --rows;
  }
};

// o[r, 0:16*NV) = x[r, 0:k) @ w[0:k, 0:16*NV) for R rows (x's and o's rows `ldx` / `ldo` apart, w's `ldw`):
// each weight vector loaded is used by all R rows, each broadcast x value by all NV vectors. With `pack`, the
// weight vectors are also stored there, `16 * NV` floats per row (a contiguous copy of the panel). `XT`: x is
// stored transposed, x[r, d] at x[d * ldx + r].
template <int R, int NV, bool XT>
inline void Tile(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k, float* o, int64_t ldo,
                 Prefetch& pf, float* pack = nullptr) {
  v16 acc[R][NV] = {};
  for (int64_t d = 0; d < k; ++d) {
    pf.Step();
    const float* wr = w + d * ldw;
    v16 wv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      wv[j] = Load(wr + 16 * j);
      // Keep it in a register: GCC folded each weight load into the FMAs, loading it R times (4x4 tiles 57 -> 98
      // GFLOP/s on one core once kept).
      __asm__("" : "+v"(wv[j]));
      if (pack != nullptr) Store(pack + (d * NV + j) * 16, wv[j]);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float xs = XT ? x[d * ldx + r] : x[r * ldx + d];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[r][j] += wv[j] * xs;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) Store(o + r * ldo + 16 * j, acc[r][j]);
}

// Weight rows a column panel's first tile prefetches ahead of its reads, into L2. LM head (32 x 512 x 32768): 8 rows
// ahead 136 GFLOP/s, 16-24 rows 163-166; into L1 instead 111-118.
constexpr int64_t kPanelPrefetchRows = 16;

// Matrices at least this wide are packed: their rows are 4 KB or more apart, so a panel's rows share cache sets
// and evict each other before the next tile reads them (LM head, 32 x 512 x 32768: ~103 -> 136-166 GFLOP/s).
// Narrower panels stay in cache in place, and packing them costs more than it saves (the mid-size model's experts
// alone, 7 layers at batch 1: 10.4-10.8 ms packed, 8.9-10.0 in place).
constexpr int64_t kPackMinColumns = 1024;

// One tile of `rows` (1-4) rows: Tile with R chosen at run time.
template <int NV, bool XT>
inline void TileOfRows(int64_t rows, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k, float* o,
                       int64_t ldo, Prefetch& pf, float* pack) {
  switch (rows) {
    case 4: Tile<4, NV, XT>(x, ldx, w, ldw, k, o, ldo, pf, pack); break;
    case 3: Tile<3, NV, XT>(x, ldx, w, ldw, k, o, ldo, pf, pack); break;
    case 2: Tile<2, NV, XT>(x, ldx, w, ldw, k, o, ldo, pf, pack); break;
    case 1: Tile<1, NV, XT>(x, ldx, w, ldw, k, o, ldo, pf, pack); break;
  }
}

// out[:, 0:16*NV) = x[rows, k] @ w[k, 0:16*NV) (w's and out's rows `n` apart; x row-major, or with `XT` stored
// transposed, [k, rows]), 4-row tiles, each summing over all of k in registers. The first tile reads the panel
// from memory, prefetching ahead, and packs it contiguously into `pack` unless it is null; the other tiles read
// that copy, or the panel in place.
template <int NV, bool XT>
void PanelTiles(int64_t rows, const float* x, const float* w, int64_t k, int64_t n, float* out, float* pack) {
  const int64_t ahead = std::min(k, kPanelPrefetchRows);
  for (int64_t d = 0; d < ahead; ++d)
    for (int v = 0; v < NV; ++v) __builtin_prefetch(w + d * n + 16 * v, 0, 2);
  Prefetch pf{reinterpret_cast<const char*>(w + ahead * n), 4 * n, NV, k - ahead};
  Prefetch none{nullptr, 0, 0, 0};
  const int64_t first = std::min<int64_t>(rows, 4);
  const int64_t ldx = XT ? rows : k;
  TileOfRows<NV, XT>(first, x, ldx, w, n, k, out, n, pf, pack);
  const float* wt = pack != nullptr ? pack : w;
  const int64_t ldw = pack != nullptr ? 16 * NV : n;
  for (int64_t r = first; r < rows; r += 4) {
    TileOfRows<NV, XT>(std::min<int64_t>(rows - r, 4), x + (XT ? r : r * k), ldx, wt, ldw, k, out + r * n, n, none,
                       nullptr);
  }
}

// out[:, c0:c1) = x[rows, k] @ w[k, c0:c1) (x's rows `k` apart, or with `XT` x stored transposed; w's and out's
// rows `n` apart; c0, c1 multiples of 16), panel by panel of 64 (at the end 16) columns.
template <bool XT = false>
void MatmulColumns(int64_t rows, const float* x, const float* w, int64_t k, int64_t n, int64_t c0, int64_t c1,
                   float* out) {
  thread_local std::vector<float> buffer;
  float* pack = nullptr;
  if (n >= kPackMinColumns) {
    buffer.resize(k * 64);
    pack = buffer.data();
  }
  int64_t j = c0;
  for (; j + 64 <= c1; j += 64) PanelTiles<4, XT>(rows, x, w + j, k, n, out + j, pack);
  for (; j < c1; j += 16) PanelTiles<1, XT>(rows, x, w + j, k, n, out + j, pack);
}

// Work handed out one piece at a time to whichever of XLA's intra-op threads asks next; the state outlives the
// call for tasks that start after the work is done.
template <typename Work>
struct Shared {
  Shared(Work work, int64_t total) : work(std::move(work)), total(total) {}
  Work work;
  const int64_t total;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Drain() {
    for (int64_t i = next.fetch_add(1); i < total; i = next.fetch_add(1)) {
      work(i);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

template <typename Work>
void RunOnPool(ffi::ThreadPool& pool, int64_t total, Work work) {
  auto shared = std::make_shared<Shared<Work>>(std::move(work), total);
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([shared] { shared->Drain(); });
  shared->Drain();
  while (shared->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

struct Problem {
  const float* x;  // tokens
  const float* gate;
  const float* up;
  const float* down;
  float* out;  // rows sorted by expert
  int64_t hidden, width;
  std::vector<int64_t> first_row, num_rows, order;  // per expert; experts with rows, largest first
  std::vector<int64_t> row_tokens;                  // sorted row -> its token
};

void RunExpert(const Problem& p, int64_t e) {
  const int64_t rows = p.num_rows[e], h = p.hidden, f = p.width;
  thread_local std::vector<float> x, gate_out, up_out;
  x.resize(rows * h);
  gate_out.resize(rows * f);
  up_out.resize(rows * f);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(p.x + p.row_tokens[p.first_row[e] + r] * h, h, x.data() + r * h);
  MatmulColumns(rows, x.data(), p.gate + e * h * f, h, f, 0, f, gate_out.data());
  MatmulColumns(rows, x.data(), p.up + e * h * f, h, f, 0, f, up_out.data());
  for (int64_t i = 0; i < rows * f; i += 16) {  // f is a multiple of 16
    const v16 g = Load(&gate_out[i]);
    Store(&gate_out[i], g / (1.0f + Exp(-g)) * Load(&up_out[i]));
  }
  MatmulColumns(rows, gate_out.data(), p.down + e * f * h, f, h, 0, h, p.out + p.first_row[e] * h);
}

// Checks gate/up [E, H, F] and down [E, F, H] against each other and the rows' width `h`.
ffi::Error CheckExpertWeights(const ffi::Buffer<ffi::F32>& gate, const ffi::Buffer<ffi::F32>& up,
                              const ffi::Buffer<ffi::F32>& down, int64_t h) {
  const auto g = gate.dimensions(), u = up.dimensions(), d = down.dimensions();
  if (g.size() != 3 || !std::equal(g.begin(), g.end(), u.begin(), u.end()) || d.size() != 3 || d[0] != g[0] ||
      d[1] != g[2] || d[2] != g[1] || g[1] != h || h % 16 != 0 || g[2] % 16 != 0) {
    return ffi::Error::InvalidArgument("cpu_experts: expected gate/up [E, H, F], down [E, F, H] for rows of width "
                                       "H, H and F multiples of 16");
  }
  return ffi::Error::Success();
}

// out[t] = sum_a weights[t, a] * expert_{ids[t, a]}(x[t]) for tokens x [T, H] and their routing ids/weights
// [T, A]: the assignments are sorted by expert (stably), experts with rows shared among XLA's intra-op threads
// largest first, each gathering its tokens' rows; assignments to ids outside [0, E) add nothing.
ffi::Error RoutedExperts(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> ids,
                         ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::F32> gate, ffi::Buffer<ffi::F32> up,
                         ffi::Buffer<ffi::F32> down, ffi::ResultBuffer<ffi::F32> out) {
  const auto x_dims = x.dimensions(), id_dims = ids.dimensions(), w_dims = weights.dimensions();
  if (x_dims.size() != 2 || id_dims.size() != 2 || id_dims[0] != x_dims[0] ||
      !std::equal(id_dims.begin(), id_dims.end(), w_dims.begin(), w_dims.end())) {
    return ffi::Error::InvalidArgument("cpu_routed_experts: expected x [T, H], ids and weights [T, A]");
  }
  const int64_t tokens = x_dims[0], h = x_dims[1], top_k = id_dims[1], m = tokens * top_k;
  if (auto error = CheckExpertWeights(gate, up, down, h); error.failure()) return error;
  const int64_t e_count = gate.dimensions()[0];
  const int32_t* id = ids.typed_data();
  thread_local std::vector<float> sorted_out;  // reused: a fresh buffer this size costs page faults every call
  sorted_out.resize(m * h);
  auto problem = std::make_shared<Problem>(Problem{x.typed_data(), gate.typed_data(), up.typed_data(),
                                                   down.typed_data(), sorted_out.data(), h, gate.dimensions()[2],
                                                   std::vector<int64_t>(e_count), std::vector<int64_t>(e_count)});
  Problem& p = *problem;
  for (int64_t i = 0; i < m; ++i)
    if (id[i] >= 0 && id[i] < e_count) ++p.num_rows[id[i]];
  for (int64_t e = 0, row = 0; e < e_count; row += p.num_rows[e++]) {
    p.first_row[e] = row;
    if (p.num_rows[e] > 0) p.order.push_back(e);
  }
  std::stable_sort(p.order.begin(), p.order.end(),
                   [&p](int64_t a, int64_t b) { return p.num_rows[a] > p.num_rows[b]; });
  std::vector<int64_t> next = p.first_row, slot(m, -1);  // assignment -> its sorted row
  p.row_tokens.resize(m);
  for (int64_t i = 0; i < m; ++i) {
    if (id[i] < 0 || id[i] >= e_count) continue;
    slot[i] = next[id[i]]++;
    p.row_tokens[slot[i]] = i / top_k;
  }
  RunOnPool(pool, static_cast<int64_t>(p.order.size()), [problem](int64_t i) {
    RunExpert(*problem, problem->order[i]);
  });
  const float* w = weights.typed_data();
  float* o = out->typed_data();
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = o + t * h;
    std::fill(row, row + h, 0.0f);
    for (int64_t a = 0; a < top_k; ++a) {
      const int64_t i = t * top_k + a;
      if (slot[i] < 0) continue;
      const float* y = sorted_out.data() + slot[i] * h;
      for (int64_t c = 0; c < h; c += 16) Store(row + c, Load(row + c) + Load(y + c) * w[i]);
    }
  }
  return ffi::Error::Success();
}

// Pieces of work (runs of whole column panels) per thread: a few, so that threads that start late still share.
constexpr int64_t kPiecesPerThread = 4;

ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                  ffi::ResultBuffer<ffi::F32> out) {
  const auto x_dims = x.dimensions(), w_dims = w.dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 2 || x_dims[1] != w_dims[0] || w_dims[1] % 16 != 0) {
    return ffi::Error::InvalidArgument("cpu_matmul: expected x [M, K], w [K, N], N a multiple of 16");
  }
  const int64_t m = x_dims[0], k = x_dims[1], n = w_dims[1];
  const int64_t panels = (n + 63) / 64;  // of 64 columns, the last one possibly narrower
  const int64_t pieces = std::max<int64_t>(
      1, std::min<int64_t>(kPiecesPerThread * (pool.num_threads() + 1), panels));
  const float* xd = x.typed_data();
  const float* wd = w.typed_data();
  float* od = out->typed_data();
  RunOnPool(pool, pieces, [=](int64_t i) {
    const int64_t c0 = 64 * (panels * i / pieces), c1 = std::min(n, 64 * (panels * (i + 1) / pieces));
    if (c0 < c1) MatmulColumns(m, xd, wd, k, n, c0, c1, od);
  });
  return ffi::Error::Success();
}

struct AttentionProblem {
  const float *q, *prefix_k, *prefix_v, *k, *v, *bias_t;
  float* out;
  const int32_t* prefix_lens;
  int64_t queries, heads, kv_heads, head_dim, cache_len;
};

// One row's queries of the heads sharing kv head g (query i = j * T + t: head g * G + j, position t), against the
// row's first `prefix_lens[row]` keys of the cache, then the T own keys, one softmax over both:
//   scores[s, i] = k[s] . q[i] / sqrt(D) + bias[s, t]
//   out[i] = sum_s e^(scores[s, i] - max_s scores[., i]) v[s] / sum_s e^(...)
// Scores are kept [keys, queries], so that the softmax runs along vectors of queries and both products are
// tiled matmuls: scores = keys @ q^T, out = scores^T @ values.
void AttendGroup(const AttentionProblem& a, int64_t row, int64_t g) {
  const int64_t t_len = a.queries, d = a.head_dim, group = a.heads / a.kv_heads, q_len = group * t_len;
  const int64_t p = a.cache_len, l = std::clamp<int64_t>(a.prefix_lens[row], 0, p), s_len = l + t_len;
  thread_local std::vector<float> q_t, scores, prefix_out, own_out;
  q_t.resize(d * q_len);
  scores.resize(s_len * q_len);
  prefix_out.resize(q_len * d);
  own_out.resize(q_len * d);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t t = 0; t < t_len; ++t)
    for (int64_t j = 0; j < group; ++j) {
      const float* qv = a.q + ((row * t_len + t) * a.heads + g * group + j) * d;
      for (int64_t c = 0; c < d; ++c) q_t[c * q_len + j * t_len + t] = qv[c] * scale;
    }
  const int64_t kv_row = row * a.kv_heads + g;
  const float *prefix_k = a.prefix_k + kv_row * p * d, *prefix_v = a.prefix_v + kv_row * p * d;
  const float *own_k = a.k + kv_row * t_len * d, *own_v = a.v + kv_row * t_len * d;
  MatmulColumns(l, prefix_k, q_t.data(), d, q_len, 0, q_len, scores.data());
  MatmulColumns(t_len, own_k, q_t.data(), d, q_len, 0, q_len, scores.data() + l * q_len);
  std::vector<v16> top(q_len / 16, v16{} - __builtin_inff()), total(q_len / 16, v16{});
  for (int64_t s = 0; s < s_len; ++s) {
    const float* bias = a.bias_t + (row * (p + t_len) + (s < l ? s : p + s - l)) * t_len;
    float* sc = scores.data() + s * q_len;
    for (int64_t i = 0; i < q_len; i += 16) {
      const v16 x = Load(sc + i) + Load(bias + i % t_len);
      Store(sc + i, x);
      top[i / 16] = top[i / 16] > x ? top[i / 16] : x;
    }
  }
  for (int64_t s = 0; s < s_len; ++s) {
    float* sc = scores.data() + s * q_len;
    for (int64_t i = 0; i < q_len; i += 16) {
      const v16 e = Exp(Load(sc + i) - top[i / 16]);
      Store(sc + i, e);
      total[i / 16] += e;
    }
  }
  MatmulColumns<true>(q_len, scores.data(), prefix_v, l, d, 0, d, prefix_out.data());
  MatmulColumns<true>(q_len, scores.data() + l * q_len, own_v, t_len, d, 0, d, own_out.data());
  for (int64_t i = 0; i < q_len; ++i) {
    const int64_t t = i % t_len, j = i / t_len;
    float* o = a.out + ((row * t_len + t) * a.heads + g * group + j) * d;
    const float sum = total[i / 16][i % 16];
    for (int64_t c = 0; c < d; c += 16) Store(o + c, (Load(&prefix_out[i * d + c]) + Load(&own_out[i * d + c])) / sum);
  }
}

ffi::Error Attention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> prefix_k,
                     ffi::Buffer<ffi::F32> prefix_v, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                     ffi::Buffer<ffi::F32> bias_t, ffi::Buffer<ffi::S32> prefix_lens,
                     ffi::ResultBuffer<ffi::F32> out) {
  const auto qd = q.dimensions(), pd = prefix_k.dimensions(), kd = k.dimensions(), bd = bias_t.dimensions();
  if (qd.size() != 4 || pd.size() != 4 || kd.size() != 4 || bd.size() != 3 || prefix_lens.dimensions().size() != 1 ||
      prefix_lens.element_count() != qd[0]) {
    return ffi::Error::InvalidArgument("cpu_attention: expected q [B, T, N, D], caches and keys [B, K, ., D], "
                                       "bias [B, P + T, T] and prefix lengths [B]");
  }
  const int64_t b = qd[0], t = qd[1], n = qd[2], d = qd[3], kv = pd[1], p = pd[2];
  const auto vd = prefix_v.dimensions(), own_vd = v.dimensions();
  const bool same = pd[0] == b && pd[3] == d && kd[0] == b && kd[1] == kv && kd[2] == t && kd[3] == d &&
                    bd[0] == b && bd[1] == p + t && bd[2] == t &&
                    std::equal(vd.begin(), vd.end(), pd.begin(), pd.end()) &&
                    std::equal(own_vd.begin(), own_vd.end(), kd.begin(), kd.end());
  if (!same || kv == 0 || n % kv != 0 || t % 16 != 0 || d % 16 != 0) {
    return ffi::Error::InvalidArgument("cpu_attention: shapes disagree, or T or D not a multiple of 16");
  }
  auto problem = std::make_shared<AttentionProblem>(AttentionProblem{
      q.typed_data(), prefix_k.typed_data(), prefix_v.typed_data(), k.typed_data(), v.typed_data(),
      bias_t.typed_data(), out->typed_data(), prefix_lens.typed_data(), t, n, kv, d, p});
  RunOnPool(pool, b * kv, [problem](int64_t i) {
    AttendGroup(*problem, i / problem->kv_heads, i % problem->kv_heads);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DmaxCpuMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(DmaxCpuAttention, Attention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(DmaxCpuRoutedExperts, RoutedExperts,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
