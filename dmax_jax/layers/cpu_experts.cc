// Routed SwiGLU experts for decoding on CPU, as an XLA FFI custom call (float32).
//
// out[s, :] = (silu(x[s] @ gate[e]) * (x[s] @ up[e])) @ down[e] for every assignment row s of expert e, the rows
// sorted by expert (`sizes[e]` rows each). At decode shapes an expert has a few rows, so the cost is reading its
// weights: each matrix is streamed once, in blocks of rows that stay in L1 while every row of the expert uses
// them (4-row x 64-column register tiles), the next block prefetched meanwhile; experts without rows are not
// read. XLA's own loop over experts copies each weight matrix out of the stacked array before its dot and pays a
// loop iteration per tile (`looped` in `dmax_jax/layers/moe_ops.py`).
// Experts are shared among XLA's intra-op threads, largest first. Rows past sum(sizes) are set to zero.
//
// Shapes: x [M, H], sizes [E] int32, gate/up [E, H, F], down [E, F, H] -> out [M, H]; H and F multiples of 16.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
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

constexpr int64_t kBlockBytes = 16384;  // a block of a weight matrix's rows (L1 holds two)

// Prefetches the next block of a weight matrix a few lines per tile step, spread over the current block's work:
// the tiles read a block panel by panel (strided rows), which the hardware prefetcher follows poorly, and one burst
// of prefetches at the block's start overflows the miss buffers (measured on one core of this machine's EPYC: 9-11
// GB/s streamed without, ~20 GB/s with, a plain sequential read 22 GB/s).
struct Prefetch {
  const float* next;
  const float* end;
  int64_t per_step;
  inline void Step() {
    for (int64_t q = 0; q < per_step && next < end; ++q, next += 16) __builtin_prefetch(next, 0, 2);
  }
};

// o[r, 0:16*NV) += x[r, 0:kb) @ w[0:kb, 0:16*NV) for R rows (x's and o's rows `ldx` / `ldo` apart, w's `ldw`):
// each weight vector loaded is used by all R rows, each broadcast x value by all NV vectors.
template <int R, int NV>
inline void Tile(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t kb, float* o, int64_t ldo,
                 Prefetch& pf) {
  v16 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) acc[r][k] = Load(o + r * ldo + 16 * k);
  for (int64_t d = 0; d < kb; ++d) {
    pf.Step();
    const float* wr = w + d * ldw;
    v16 wv[NV];
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) {
      wv[k] = Load(wr + 16 * k);
      __asm__("" : "+v"(wv[k]));  // keep it in a register: folded into each FMA it would be loaded R times
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float xs = x[r * ldx + d];
#pragma GCC unroll 8
      for (int k = 0; k < NV; ++k) acc[r][k] += wv[k] * xs;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) Store(o + r * ldo + 16 * k, acc[r][k]);
}

// Rows [0, rows) of o[:, 0:64) += x[:, 0:kb) @ w[0:kb, 0:64), four rows at a time.
inline void Panel(int64_t rows, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t kb, float* o,
                  int64_t ldo, Prefetch& pf) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) Tile<4, 4>(x + r * ldx, ldx, w, ldw, kb, o + r * ldo, ldo, pf);
  switch (rows - r) {
    case 3: Tile<3, 4>(x + r * ldx, ldx, w, ldw, kb, o + r * ldo, ldo, pf); break;
    case 2: Tile<2, 4>(x + r * ldx, ldx, w, ldw, kb, o + r * ldo, ldo, pf); break;
    case 1: Tile<1, 4>(x + r * ldx, ldx, w, ldw, kb, o + r * ldo, ldo, pf); break;
  }
}

// Rows of o[:, 0:16) += x @ w[:, 0:16), one at a time (the last columns when n is not a multiple of 64).
inline void NarrowPanel(int64_t rows, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t kb,
                        float* o, int64_t ldo, Prefetch& pf) {
  for (int64_t r = 0; r < rows; ++r) Tile<1, 1>(x + r * ldx, ldx, w, ldw, kb, o + r * ldo, ldo, pf);
}

// out[rows, n] = x[rows, k] @ w[k, n]: w is read from memory once, in blocks of contiguous rows (the next one
// prefetched during the current one), and each block is applied to every row while it is in cache.
void MatmulRows(int64_t rows, const float* x, const float* w, int64_t k, int64_t n, float* out) {
  const int64_t block = std::max<int64_t>(4, kBlockBytes / (4 * n));
  std::fill(out, out + rows * n, 0.0f);
  for (int64_t d0 = 0; d0 < k; d0 += block) {
    const int64_t kb = std::min(block, k - d0);
    const int64_t steps = (n / 64 * ((rows + 3) / 4) + n % 64 / 16 * rows) * kb;  // tile steps in this block
    Prefetch pf{w + (d0 + kb) * n, w + std::min(k, d0 + kb + block) * n, 0};
    pf.per_step = ((pf.end - pf.next) / 16 + steps - 1) / steps;
    const float* wb = w + d0 * n;
    int64_t j = 0;
    for (; j + 64 <= n; j += 64) Panel(rows, x + d0, k, wb + j, n, kb, out + j, n, pf);
    for (; j < n; j += 16) NarrowPanel(rows, x + d0, k, wb + j, n, kb, out + j, n, pf);
  }
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
  MatmulRows(rows, x, p.gate + e * h * f, h, f, gate_out.data());
  MatmulRows(rows, x, p.up + e * h * f, h, f, up_out.data());
  for (int64_t i = 0; i < rows * f; ++i) {
    const float g = gate_out[i];
    gate_out[i] = g / (1.0f + std::exp(-g)) * up_out[i];
  }
  MatmulRows(rows, gate_out.data(), p.down + e * f * h, f, h, p.out + p.first_row[e] * h);
}

// Experts handed out one at a time to whichever thread asks next; the state outlives the call for tasks that
// start after the work is done.
struct Shared {
  Problem problem;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

void Drain(Shared& s) {
  const int64_t total = static_cast<int64_t>(s.problem.order.size());
  for (int64_t i = s.next.fetch_add(1); i < total; i = s.next.fetch_add(1)) {
    RunExpert(s.problem, s.problem.order[i]);
    s.done.fetch_add(1, std::memory_order_release);
  }
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
  auto shared = std::make_shared<Shared>();
  Problem& p = shared->problem;
  p = Problem{x.typed_data(), gate.typed_data(), up.typed_data(), down.typed_data(), out->typed_data(), h, f,
              std::vector<int64_t>(e_count), std::vector<int64_t>(e_count), {}};
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
  const int64_t total = static_cast<int64_t>(p.order.size());
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([shared] { Drain(*shared); });
  Drain(*shared);
  while (shared->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DmaxCpuExperts, Experts,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
