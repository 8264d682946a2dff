// Matmuls of a decoding forward on CPU, as XLA FFI custom calls (float32): `DmaxCpuMatmul` (x @ w for a few rows:
// projections, dense MLPs, LM head) and `DmaxCpuExperts` (a layer's routed SwiGLU experts).
//
// Both multiply panel by panel of 64 weight columns, each 4-row register tile summing over all of k in registers:
// the panel's first tile reads it from memory, a fixed number of weight rows prefetched ahead, and in wide matrices
// packs it contiguously; the other tiles read the panel from cache (the packed copy, or in place). At decode shapes the cost is reading the weights once at
// the core's FMA rate; XLA:CPU's dot runs well under it for these shapes, and its loop over experts copies each
// weight matrix out of the stacked array before its dot (`looped` in `dmax_jax/layers/moe_ops.py`).
//
// Experts: out[s, :] = (silu(x[s] @ gate[e]) * (x[s] @ up[e])) @ down[e] for every assignment row s of expert e,
// the rows sorted by expert (`sizes[e]` rows each); experts without rows are not read; experts are shared among
// XLA's intra-op threads, largest first; rows past sum(sizes) are set to zero. Matmul: column ranges are shared
// among the threads.
//
// Shapes: matmul x [M, K], w [K, N] -> [M, N], N a multiple of 16. Experts x [M, H], sizes [E] int32,
// gate/up [E, H, F], down [E, F, H] -> out [M, H]; H and F multiples of 16.
#include <algorithm>
#include <atomic>
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
// weight vectors are also stored there, `16 * NV` floats per row (a contiguous copy of the panel).
template <int R, int NV>
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
      const float xs = x[r * ldx + d];
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
template <int NV>
inline void TileOfRows(int64_t rows, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t k, float* o,
                       int64_t ldo, Prefetch& pf, float* pack) {
  switch (rows) {
    case 4: Tile<4, NV>(x, ldx, w, ldw, k, o, ldo, pf, pack); break;
    case 3: Tile<3, NV>(x, ldx, w, ldw, k, o, ldo, pf, pack); break;
    case 2: Tile<2, NV>(x, ldx, w, ldw, k, o, ldo, pf, pack); break;
    case 1: Tile<1, NV>(x, ldx, w, ldw, k, o, ldo, pf, pack); break;
  }
}

// out[:, 0:16*NV) = x[rows, k] @ w[k, 0:16*NV) (w's and out's rows `n` apart), 4-row tiles, each summing over all
// of k in registers. The first tile reads the panel from memory, prefetching ahead, and packs it contiguously into
// `pack` unless it is null; the other tiles read that copy, or the panel in place.
template <int NV>
void PanelTiles(int64_t rows, const float* x, const float* w, int64_t k, int64_t n, float* out, float* pack) {
  const int64_t ahead = std::min(k, kPanelPrefetchRows);
  for (int64_t d = 0; d < ahead; ++d)
    for (int v = 0; v < NV; ++v) __builtin_prefetch(w + d * n + 16 * v, 0, 2);
  Prefetch pf{reinterpret_cast<const char*>(w + ahead * n), 4 * n, NV, k - ahead};
  Prefetch none{nullptr, 0, 0, 0};
  const int64_t first = std::min<int64_t>(rows, 4);
  TileOfRows<NV>(first, x, k, w, n, k, out, n, pf, pack);
  const float* wt = pack != nullptr ? pack : w;
  const int64_t ldw = pack != nullptr ? 16 * NV : n;
  for (int64_t r = first; r < rows; r += 4) {
    TileOfRows<NV>(std::min<int64_t>(rows - r, 4), x + r * k, k, wt, ldw, k, out + r * n, n, none, nullptr);
  }
}

// out[:, c0:c1) = x[rows, k] @ w[k, c0:c1) (x's rows `k` apart, w's and out's `n`; c0, c1 multiples of 16),
// panel by panel of 64 (at the end 16) columns.
void MatmulColumns(int64_t rows, const float* x, const float* w, int64_t k, int64_t n, int64_t c0, int64_t c1,
                   float* out) {
  thread_local std::vector<float> buffer;
  float* pack = nullptr;
  if (n >= kPackMinColumns) {
    buffer.resize(k * 64);
    pack = buffer.data();
  }
  int64_t j = c0;
  for (; j + 64 <= c1; j += 64) PanelTiles<4>(rows, x, w + j, k, n, out + j, pack);
  for (; j < c1; j += 16) PanelTiles<1>(rows, x, w + j, k, n, out + j, pack);
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
  const float* x;
  const float* gate;
  const float* up;
  const float* down;
  float* out;
  int64_t hidden, width;
  std::vector<int64_t> first_row, num_rows, order;  // per expert; experts with rows, largest first
};

void RunExpert(const Problem& p, int64_t e) {
  const int64_t rows = p.num_rows[e], h = p.hidden, f = p.width;
  thread_local std::vector<float> gate_out, up_out;
  gate_out.resize(rows * f);
  up_out.resize(rows * f);
  const float* x = p.x + p.first_row[e] * h;
  MatmulColumns(rows, x, p.gate + e * h * f, h, f, 0, f, gate_out.data());
  MatmulColumns(rows, x, p.up + e * h * f, h, f, 0, f, up_out.data());
  for (int64_t i = 0; i < rows * f; i += 16) {  // f is a multiple of 16
    const v16 g = Load(&gate_out[i]);
    Store(&gate_out[i], g / (1.0f + Exp(-g)) * Load(&up_out[i]));
  }
  MatmulColumns(rows, gate_out.data(), p.down + e * f * h, f, h, 0, h, p.out + p.first_row[e] * h);
}

ffi::Error Experts(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S32> sizes,
                   ffi::Buffer<ffi::F32> gate, ffi::Buffer<ffi::F32> up, ffi::Buffer<ffi::F32> down,
                   ffi::ResultBuffer<ffi::F32> out) {
  const auto x_dims = x.dimensions(), w_dims = gate.dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 3 || sizes.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("cpu_experts: expected x [M, H], sizes [E], gate [E, H, F]");
  }
  const int64_t m = x_dims[0], h = x_dims[1], e_count = w_dims[0], f = w_dims[2];
  const auto up_dims = up.dimensions(), down_dims = down.dimensions();
  const bool up_ok = up_dims.size() == 3 && up_dims[0] == e_count && up_dims[1] == h && up_dims[2] == f;
  const bool down_ok = down_dims.size() == 3 && down_dims[0] == e_count && down_dims[1] == f && down_dims[2] == h;
  if (w_dims[1] != h || sizes.dimensions()[0] != e_count || !up_ok || !down_ok || h % 16 != 0 || f % 16 != 0) {
    return ffi::Error::InvalidArgument("cpu_experts: shapes disagree, or H or F not a multiple of 16");
  }
  auto problem = std::make_shared<Problem>(Problem{x.typed_data(), gate.typed_data(), up.typed_data(),
                                                   down.typed_data(), out->typed_data(), h, f,
                                                   std::vector<int64_t>(e_count), std::vector<int64_t>(e_count), {}});
  Problem& p = *problem;
  int64_t row = 0;
  for (int64_t e = 0; e < e_count; ++e) {
    const int64_t n = std::clamp<int64_t>(sizes.typed_data()[e], 0, m - row);
    p.first_row[e] = row;
    p.num_rows[e] = n;
    row += n;
    if (n > 0) p.order.push_back(e);
  }
  std::fill(p.out + row * h, p.out + m * h, 0.0f);
  std::stable_sort(p.order.begin(), p.order.end(),
                   [&p](int64_t a, int64_t b) { return p.num_rows[a] > p.num_rows[b]; });
  RunOnPool(pool, static_cast<int64_t>(p.order.size()), [problem](int64_t i) {
    RunExpert(*problem, problem->order[i]);
  });
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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DmaxCpuMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(DmaxCpuExperts, Experts,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
