// A hand-written reference for the decode forward's expert products: out[e, c] = x[e, c] @ w[e] for C rows per
// expert, float32, weights read from memory once per expert, threads over experts (OpenMP). Not part of the
// package: `benchmarks/expert_matmul_native.py` builds it to measure what this machine can do for the same
// bytes and FLOPs that XLA's batched matmul does, outside XLA.
//
// Two weight layouts:
//   in_major [E, K, N] (the project's expert layout): rows in pairs, each pair streams the expert's whole matrix
//     row by row (contiguous reads; the pairs after the first re-read it from L2);
//   packed [E, N/64, K, 64] (a kernel-friendly layout): up to 8 rows at once over one contiguous 64-column panel.
//
// usage: expert_matmul_ref LAYOUT EXPERTS K N MATRICES C REPEATS  -> prints "best_seconds"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

static inline v16 load(const float* p) { return *(const v16u*)p; }
static inline void store(float* p, v16 v) { *(v16u*)p = v; }

// rows x[0..R) (stride K) times w[K, 16*NV] (row stride ldw) -> o (row stride ldo)
template <int R, int NV>
static void tile(const float* x, int K, const float* w, int ldw, float* o, int ldo) {
  v16 acc[R][NV] = {};
  for (int d = 0; d < K; ++d) {
    const float* wr = w + (size_t)d * ldw;
    v16 xb[R];
    for (int r = 0; r < R; ++r) xb[r] = x[(size_t)r * K + d] - (v16){};  // broadcast
    for (int k = 0; k < NV; ++k) {
      const v16 wv = load(wr + 16 * k);
      for (int r = 0; r < R; ++r) acc[r][k] += xb[r] * wv;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < NV; ++k) store(o + (size_t)r * ldo + 16 * k, acc[r][k]);
}

static void in_major(const float* x, const float* w, float* out, int E, int C, int K, int N) {
#pragma omp parallel for schedule(static)
  for (int e = 0; e < E; ++e)
    for (int j = 0; j < N; j += 256) {
      const float* we = w + (size_t)e * K * N + j;
      const float* xe = x + (size_t)e * C * K;
      float* oe = out + (size_t)e * C * N + j;
      int c = 0;
      for (; c + 2 <= C; c += 2) tile<2, 16>(xe + (size_t)c * K, K, we, N, oe + (size_t)c * N, N);
      for (; c < C; ++c) tile<1, 16>(xe + (size_t)c * K, K, we, N, oe + (size_t)c * N, N);
    }
}

static void packed(const float* x, const float* w, float* out, int E, int C, int K, int N) {
#pragma omp parallel for schedule(static)
  for (int e = 0; e < E; ++e)
    for (int j = 0; j < N / 64; ++j) {
      const float* panel = w + ((size_t)e * (N / 64) + j) * K * 64;
      const float* xe = x + (size_t)e * C * K;
      float* oe = out + (size_t)e * C * N + 64 * j;
      int c = 0;
      for (; c + 8 <= C; c += 8) tile<8, 4>(xe + (size_t)c * K, K, panel, 64, oe + (size_t)c * N, N);
      for (; c + 2 <= C; c += 2) tile<2, 4>(xe + (size_t)c * K, K, panel, 64, oe + (size_t)c * N, N);
      for (; c < C; ++c) tile<1, 4>(xe + (size_t)c * K, K, panel, 64, oe + (size_t)c * N, N);
    }
}

int main(int argc, char** argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: %s in_major|packed EXPERTS K N MATRICES C REPEATS\n", argv[0]);
    return 2;
  }
  const bool is_packed = !strcmp(argv[1], "packed");
  const int E = atoi(argv[2]), K = atoi(argv[3]), N = atoi(argv[4]), M = atoi(argv[5]), C = atoi(argv[6]);
  const int repeats = atoi(argv[7]);
  if (N % 256 != 0 || E <= 0 || K <= 0 || M <= 0 || C <= 0) {
    fprintf(stderr, "N must be a multiple of 256 and every size positive\n");
    return 2;
  }
  std::vector<std::vector<float>> w(M, std::vector<float>((size_t)E * K * N));  // M matrices of E experts
  for (auto& m : w)
    for (size_t i = 0; i < m.size(); ++i) m[i] = (float)((i * 2654435761u) % 1000) * 1e-6f;
  std::vector<float> x((size_t)E * C * K, 0.5f), out((size_t)E * C * N);
  double best = 1e30;
  for (int r = 0; r < repeats + 1; ++r) {  // the first pass warms up
    const auto t0 = std::chrono::steady_clock::now();
    for (int m = 0; m < M; ++m) (is_packed ? packed : in_major)(x.data(), w[m].data(), out.data(), E, C, K, N);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0 && s < best) best = s;
  }
  printf("%.9f\n", best);
  return 0;
}
