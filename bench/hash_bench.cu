/* SPDX-License-Identifier: Apache-2.0 */
/* bench/hash_bench.cu: the CUDA hash kernel (cuda/cuda_hash_kernel.cuh,
 * dac_launch_hash) against the kernel it replaced, kept below verbatim
 * under another name: perm, wts and qs must agree byte for byte on every
 * shape, dtype and path, with the bits per thread (TB) the launch picks and
 * with each of 2, 4 and 8 forced (dac_launch_hash_tb); then both are timed
 * on the benchmark shapes, small grids (seq 1024, 2048) and a large one
 * (seq 8192), the new kernel at each TB beside.
 *
 * nvcc -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -Iinclude -Ilib -Icuda \
 *   bench/hash_bench.cu cuda/cuda_hash.cu cuda/cuda_hash_g?.cu -o /tmp/hash_bench && /tmp/hash_bench
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <random>
#include <vector>

#include "cuda_dev.cuh"

#define CHECK(call)                                                                   \
  do {                                                                                \
    const cudaError_t e_ = (call);                                                    \
    if (e_ != cudaSuccess) {                                                          \
      fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call,                   \
              cudaGetErrorString(e_));                                                \
      exit(1);                                                                        \
    }                                                                                 \
  } while (0)

/* ---- the reference: cuda/cuda_hash.cu's hash kernel before the rewrite ---- */

#define HASH_RCHUNK 64

/* One block per (tile, head, batch), one thread per column: the thread
 * keeps the hash_bits sums of its column in registers and runs over the
 * tile's rows in order (the projections come through shared memory in
 * chunks of rows), so each p_b is the same sequential fma chain as in
 * lib/hash.c. Then keys, the rank sort, the fusion weights and, when qs is
 * given, the fused Q rows of the tile. */
template <int NB, int GS>
__global__ void __launch_bounds__(256)
    dac_hash_kernel_old(const void *__restrict__ q, da_dtype dt, int heads, int seq_q, int d,
                    const float *__restrict__ proj, int hash_bits, int hash_block, int G, int norm,
                    int n_tiles, int *__restrict__ perm, float *__restrict__ wts,
                    void *__restrict__ qs, da_dtype qs_dt, int qs_ld, int ng) {
  __shared__ __align__(16) float Rs[NB][HASH_RCHUNK];
  __shared__ uint32_t keys[256];
  __shared__ int perm_s[256];
  __shared__ float a_s[256];
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int r0 = tile * hash_block;
  const int rows = min(hash_block, seq_q - r0);
  const size_t bh = (size_t)b * heads + h;
  const size_t qoff = (bh * (size_t)seq_q + (size_t)r0) * (size_t)d;
  const int c = threadIdx.x;
  float acc[NB];
#pragma unroll
  for (int i = 0; i < NB; i++) acc[i] = 0.0f;
  float nrm = 0.0f;
  for (int rc = 0; rc < rows; rc += HASH_RCHUNK) {
    const int n = min(HASH_RCHUNK, rows - rc);
    __syncthreads();
    for (int i = threadIdx.x; i < NB * HASH_RCHUNK; i += blockDim.x) {
      const int bb = i / HASH_RCHUNK, rr = i % HASH_RCHUNK;
      Rs[bb][rr] = bb < hash_bits && rr < n ? proj[(size_t)bb * hash_block + rc + rr] : 0.0f;
    }
    __syncthreads();
    if (c < d) {
      /* 32 rows' values of this column first (independent loads in
       * flight together), then the fma chains in row order, the
       * projections read four rows at a time */
      for (int r16 = 0; r16 < n; r16 += 32) {
        float xs[32];
#pragma unroll
        for (int rr = 0; rr < 32; rr++)
          xs[rr] = r16 + rr < n ? dac_ld(q, dt, qoff + (size_t)(rc + r16 + rr) * d + c) : 0.0f;
#pragma unroll
        for (int r4 = 0; r4 < 32; r4 += 4) {
          if (r16 + r4 < n) {
            float4 rv[NB];
#pragma unroll
            for (int bb = 0; bb < NB; bb++) rv[bb] = *reinterpret_cast<const float4 *>(&Rs[bb][r16 + r4]);
#pragma unroll
            for (int k = 0; k < 4; k++) {
              if (r16 + r4 + k < n) {
#pragma unroll
                for (int bb = 0; bb < NB; bb++) {
                  const float rk = k == 0 ? rv[bb].x : k == 1 ? rv[bb].y : k == 2 ? rv[bb].z : rv[bb].w;
                  if (bb < hash_bits) acc[bb] = __fmaf_rn(rk, xs[r4 + k], acc[bb]);
                }
                nrm = __fmaf_rn(xs[r4 + k], xs[r4 + k], nrm);
              }
            }
          }
        }
      }
    }
  }
  if (c < d) {
    uint32_t k = 0;
#pragma unroll
    for (int bb = 0; bb < NB; bb++)
      if (bb < hash_bits && acc[bb] > 0.0f) k |= 1u << bb;
    k ^= k >> 1;
    k ^= k >> 2;
    k ^= k >> 4;
    k ^= k >> 8;
    k ^= k >> 16;
    keys[c] = k;
    a_s[c] = norm ? sqrtf(nrm) : 1.0f;
  }
  __syncthreads();
  const size_t poff = (bh * (size_t)n_tiles + (size_t)tile) * (size_t)d;
  if (c < d) {
    const uint32_t kc = keys[c];
    int rank = 0;
    for (int e = 0; e < d; e++) {
      const uint32_t ke = keys[e];
      rank += (ke < kc) || (ke == kc && e < c);
    }
    perm_s[rank] = c;
    perm[poff + rank] = c;
  }
  if (!wts) return;
  __syncthreads();
  if (norm) {
    for (int g0 = threadIdx.x * G; g0 < d; g0 += blockDim.x * G) {
      const int g1 = min(g0 + G, d);
      float sum = 0.0f;
      for (int i = g0; i < g1; i++) sum = __fadd_rn(sum, a_s[perm_s[i]]);
      if (!(sum > 0.0f))
        for (int i = g0; i < g1; i++) a_s[perm_s[i]] = 1.0f;
    }
    __syncthreads();
  }
  if (c < d) wts[poff + c] = a_s[c];
  if (GS == 1 || !qs) return;
  /* fused Q of the tile: qs[r][g] = sum Q[r][c] / sum a_c over group g.
   * Lane l of each warp makes columns g = l, l + 32, ... of a row (their
   * source columns and denominators stay in registers); the warps share
   * out the rows. */
  constexpr int MAXS = (256 / GS + 31) / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  int src_c[MAXS][GS];
  float den[MAXS];
#pragma unroll
  for (int s = 0; s < MAXS; s++) {
    const int g = lane + 32 * s;
    den[s] = 0.0f;
#pragma unroll
    for (int i = 0; i < GS; i++) {
      const int p = g * GS + i;
      src_c[s][i] = g < ng && p < d ? perm_s[p] : -1;
      if (src_c[s][i] >= 0) den[s] += a_s[src_c[s][i]];
    }
  }
  const size_t qsoff = (bh * (size_t)seq_q + (size_t)r0) * (size_t)qs_ld;
  /* four rows at a time: all their loads in flight before the stores */
  constexpr int RU = 4;
  for (int r0w = warp; r0w < rows; r0w += nw * RU) {
    float num[RU][MAXS];
#pragma unroll
    for (int u = 0; u < RU; u++) {
      const int r = r0w + u * nw;
      const size_t rq = qoff + (size_t)(r < rows ? r : 0) * d;
#pragma unroll
      for (int s = 0; s < MAXS; s++) {
        num[u][s] = 0.0f;
#pragma unroll
        for (int i = 0; i < GS; i++)
          if (r < rows && src_c[s][i] >= 0) num[u][s] += dac_ld(q, dt, rq + src_c[s][i]);
      }
    }
#pragma unroll
    for (int u = 0; u < RU; u++) {
      const int r = r0w + u * nw;
      if (r >= rows) break;
#pragma unroll
      for (int s = 0; s < MAXS; s++) {
        const int g = lane + 32 * s;
        if (g < qs_ld) dac_st(qs, qs_dt, qsoff + (size_t)r * qs_ld + g, g < ng ? num[u][s] / den[s] : 0.0f);
      }
    }
  }
}

static cudaError_t dac_launch_hash_old(const void *q, da_dtype dt, int batch, int heads, int seq_q,
                                       int d, const float *proj, int hash_bits, int hash_block,
                                       int G, da_fusion fusion, int *perm, float *wts, void *qs,
                                       da_dtype qs_dt, int qs_ld, int ng, cudaStream_t s) {
  const int n_tiles = (seq_q + hash_block - 1) / hash_block;
  const int threads = d <= 32 ? 32 : (d + 31) / 32 * 32;
  dim3 grid(n_tiles, heads, batch);
#define DAC_HASH_LAUNCH(NB, GS)                                                               \
  dac_hash_kernel_old<NB, GS><<<grid, threads, 0, s>>>(q, dt, heads, seq_q, d, proj, hash_bits,   \
                                                   hash_block, G, fusion == DA_FUSE_NORM,     \
                                                   n_tiles, perm, wts, qs, qs_dt, qs_ld, ng)
#define DAC_HASH_LAUNCH_G(NB)   \
  switch (G) {                  \
  case 1: DAC_HASH_LAUNCH(NB, 1); break; \
  case 2: DAC_HASH_LAUNCH(NB, 2); break; \
  case 4: DAC_HASH_LAUNCH(NB, 4); break; \
  case 8: DAC_HASH_LAUNCH(NB, 8); break; \
  default: return cudaErrorInvalidValue; \
  }
  if (hash_bits <= 8)
    DAC_HASH_LAUNCH_G(8)
  else if (hash_bits <= 16)
    DAC_HASH_LAUNCH_G(16)
  else
    DAC_HASH_LAUNCH_G(32)
#undef DAC_HASH_LAUNCH_G
#undef DAC_HASH_LAUNCH
  return cudaGetLastError();
}

/* ---- the comparison ---- */

namespace {

struct Case {
  const char *name;
  da_dtype dt;
  int batch, heads, seq, d, hash_block, hash_bits, G;
  da_fusion fusion;
  bool with_wts, with_qs;
  da_dtype qs_dt;
  bool qs_pad16; /* qs_ld = ng rounded up to 16 (tensor-core path), else ng */
  int q_shift;   /* Q starts this many elements past an aligned address */
};

uint16_t to_half_bits(float f) {
  const __half h = __float2half_rn(f);
  uint16_t u;
  memcpy(&u, &h, 2);
  return u;
}

uint16_t to_bf16_bits(float f) {
  const __nv_bfloat16 h = __float2bfloat16_rn(f);
  uint16_t u;
  memcpy(&u, &h, 2);
  return u;
}

/* Q with what exercises the corners: mostly N(0, 1), per tile some columns
 * all zero (a NORM group of zero weight), some copies of another column
 * (equal codes: the tie-break by column), some -0.0f, some large. */
std::vector<uint8_t> make_q(const Case &c, std::mt19937_64 &rng) {
  const size_t es = c.dt == DA_F32 ? 4 : 2;
  const size_t rows = (size_t)c.batch * c.heads * c.seq;
  std::vector<float> v(rows * c.d);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> col(0, c.d - 1);
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  for (auto &x : v) x = nd(rng);
  for (size_t r0 = 0; r0 < rows; r0 += c.hash_block) {
    const size_t r1 = std::min(rows, r0 + c.hash_block);
    for (int k = 0; k < 3; k++) {
      const int zc = col(rng), sc = col(rng), dc = col(rng);
      const float scale = u01(rng) < 0.5f ? 1e4f : 1e-4f;
      for (size_t r = r0; r < r1; r++) {
        v[r * c.d + dc] = v[r * c.d + sc];
        v[r * c.d + zc] = u01(rng) < 0.5f ? 0.0f : -0.0f;
        v[r * c.d + col(rng) % c.d] *= scale;
      }
    }
  }
  std::vector<uint8_t> out(v.size() * es);
  for (size_t i = 0; i < v.size(); i++) {
    if (es == 4) {
      memcpy(&out[4 * i], &v[i], 4);
    } else {
      const uint16_t h = c.dt == DA_F16 ? to_half_bits(v[i]) : to_bf16_bits(v[i]);
      memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

struct Bufs {
  void *q_alloc = nullptr, *q = nullptr;
  float *proj = nullptr;
  int *perm[2] = {nullptr, nullptr};
  float *wts[2] = {nullptr, nullptr};
  void *qs[2] = {nullptr, nullptr};
  size_t perm_n = 0, qs_bytes = 0;
  int ng = 0, qs_ld = 0;
};

void setup(const Case &c, Bufs &b, std::mt19937_64 &rng) {
  const size_t es = c.dt == DA_F32 ? 4 : 2;
  const int n_tiles = (c.seq + c.hash_block - 1) / c.hash_block;
  const std::vector<uint8_t> q = make_q(c, rng);
  CHECK(cudaMalloc(&b.q_alloc, q.size() + 16));
  b.q = static_cast<char *>(b.q_alloc) + c.q_shift * es;
  CHECK(cudaMemcpy(b.q, q.data(), q.size(), cudaMemcpyHostToDevice));
  std::vector<float> proj((size_t)c.hash_bits * c.hash_block);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto &x : proj) x = nd(rng);
  CHECK(cudaMalloc(&b.proj, proj.size() * sizeof(float)));
  CHECK(cudaMemcpy(b.proj, proj.data(), proj.size() * sizeof(float), cudaMemcpyHostToDevice));
  b.ng = (c.d + c.G - 1) / c.G;
  b.qs_ld = c.qs_pad16 ? (b.ng + 15) / 16 * 16 : b.ng;
  b.perm_n = (size_t)c.batch * c.heads * n_tiles * c.d;
  b.qs_bytes = (size_t)c.batch * c.heads * c.seq * b.qs_ld * (c.qs_dt == DA_F32 ? 4 : 2);
  for (int k = 0; k < 2; k++) {
    /* the same filler in both, so that what neither writes compares equal */
    CHECK(cudaMalloc(&b.perm[k], b.perm_n * sizeof(int)));
    CHECK(cudaMemset(b.perm[k], 0xa5, b.perm_n * sizeof(int)));
    CHECK(cudaMalloc(&b.wts[k], b.perm_n * sizeof(float)));
    CHECK(cudaMemset(b.wts[k], 0xa5, b.perm_n * sizeof(float)));
    CHECK(cudaMalloc(&b.qs[k], b.qs_bytes));
    CHECK(cudaMemset(b.qs[k], 0xa5, b.qs_bytes));
  }
}

void teardown(Bufs &b) {
  CHECK(cudaFree(b.q_alloc));
  CHECK(cudaFree(b.proj));
  for (int k = 0; k < 2; k++) {
    CHECK(cudaFree(b.perm[k]));
    CHECK(cudaFree(b.wts[k]));
    CHECK(cudaFree(b.qs[k]));
  }
}

/* which 0: the old kernel; 1: the new one at TB tb (0: its own pick) */
cudaError_t run(const Case &c, const Bufs &b, int which, int tb = 0) {
  if (which == 0)
    return dac_launch_hash_old(b.q, c.dt, c.batch, c.heads, c.seq, c.d, b.proj, c.hash_bits,
                               c.hash_block, c.G, c.fusion, b.perm[0],
                               c.with_wts ? b.wts[0] : nullptr, c.with_qs ? b.qs[0] : nullptr,
                               c.qs_dt, b.qs_ld, b.ng, 0);
  return dac_launch_hash_tb(b.q, c.dt, c.batch, c.heads, c.seq, c.d, b.proj, c.hash_bits,
                            c.hash_block, c.G, c.fusion, b.perm[1],
                            c.with_wts ? b.wts[1] : nullptr, c.with_qs ? b.qs[1] : nullptr,
                            c.qs_dt, b.qs_ld, b.ng, 0, tb);
}

/* whether the new kernel has TB tb for this shape: at most 256 threads
 * (cuda/cuda_hash.cu's dac_hash_threads), and 2 only up to 16 bits */
bool new_has_tb(const Case &c, int tb) {
  return ((c.hash_bits + tb - 1) / tb * ((c.d + 3) / 4) + 31) / 32 * 32 <= 256 &&
         (tb != 2 || c.hash_bits <= 16);
}

/* first differing byte of two device buffers, or -1 */
long long first_diff(const void *x, const void *y, size_t bytes) {
  std::vector<uint8_t> hx(bytes), hy(bytes);
  CHECK(cudaMemcpy(hx.data(), x, bytes, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(hy.data(), y, bytes, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < bytes; i++)
    if (hx[i] != hy[i]) return (long long)i;
  return -1;
}

/* the old kernel against the new one at its own TB and at each of 2, 4,
 * 8 that the shape allows; the new one's outputs are refilled before each
 * run, so that every run must write all that the old one does */
bool compare(const Case &c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bufs b;
  setup(c, b, rng);
  CHECK(run(c, b, 0));
  bool all = true;
  printf("%-46s", c.name);
  for (const int tb : {0, 2, 4, 8}) {
    if (tb && !new_has_tb(c, tb)) {
      printf(" tb%d -", tb);
      continue;
    }
    CHECK(cudaMemset(b.perm[1], 0xa5, b.perm_n * sizeof(int)));
    CHECK(cudaMemset(b.wts[1], 0xa5, b.perm_n * sizeof(float)));
    CHECK(cudaMemset(b.qs[1], 0xa5, b.qs_bytes));
    CHECK(run(c, b, 1, tb));
    CHECK(cudaDeviceSynchronize());
    const long long dp = first_diff(b.perm[0], b.perm[1], b.perm_n * sizeof(int));
    const long long dw = first_diff(b.wts[0], b.wts[1], b.perm_n * sizeof(float));
    const long long dq = first_diff(b.qs[0], b.qs[1], b.qs_bytes);
    const bool ok = dp < 0 && dw < 0 && dq < 0;
    if (tb)
      printf(" tb%d %s", tb, ok ? "ok" : "FAIL");
    else
      printf(" auto %s", ok ? "ok" : "FAIL");
    if (!ok) printf(" (first differing byte: perm %lld, wts %lld, qs %lld)", dp, dw, dq);
    all = all && ok;
  }
  printf("  %s\n", all ? "ok" : "FAIL");
  teardown(b);
  return all;
}

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/* median over 15 samples (CUDA events) of the mean time of 10 back-to-back
 * runs, after 3 warm-up runs, in us: the device's time per run rather than
 * that plus the host's per-launch calls */
float time_us(const Case &c, const Bufs &b, int which, int tb = 0) {
  constexpr int REPS = 10;
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  for (int i = 0; i < 3; i++) CHECK(run(c, b, which, tb));
  CHECK(cudaDeviceSynchronize());
  std::vector<float> t;
  for (int i = 0; i < 15; i++) {
    CHECK(cudaEventRecord(e0, 0));
    for (int r = 0; r < REPS; r++) CHECK(run(c, b, which, tb));
    CHECK(cudaEventRecord(e1, 0));
    CHECK(cudaEventSynchronize(e1));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms * 1000.0f / REPS);
  }
  CHECK(cudaEventDestroy(e0));
  CHECK(cudaEventDestroy(e1));
  return median(t);
}

} // namespace

int main() {
  cudaDeviceProp prop;
  int dev;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaGetDeviceProperties(&prop, dev));
  printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);

  const da_dtype F32 = DA_F32, F16 = DA_F16, BF16 = DA_BF16;
  const da_fusion MEAN = DA_FUSE_MEAN, NORM = DA_FUSE_NORM;
  // clang-format off
  /* name, dt, batch, heads, seq, d, hash_block, hash_bits, G, fusion, wts, qs, qs_dt, pad16, shift */
  const Case cases[] = {
      {"f16 d128 hb128 b16 G2 MEAN", F16, 2, 3, 1000, 128, 128, 16, 2, MEAN, true, true, F16, true, 0},
      {"f16 d128 hb128 b16 G4 NORM", F16, 2, 3, 1000, 128, 128, 16, 4, NORM, true, true, F16, true, 0},
      {"f16 d128 hb128 b16 G2 NORM qs f32", F16, 1, 3, 1000, 128, 128, 16, 2, NORM, true, true, F32, false, 0},
      {"bf16 d64 hb64 b8 G4 NORM", BF16, 2, 2, 1000, 64, 64, 8, 4, NORM, true, true, BF16, true, 0},
      {"bf16 d128 hb128 b16 G8 MEAN", BF16, 1, 4, 1000, 128, 128, 16, 8, MEAN, true, true, BF16, true, 0},
      {"f32 d80 hb100 b32 G8 NORM qs f32", F32, 1, 3, 1000, 80, 100, 32, 8, NORM, true, true, F32, false, 0},
      {"f32 d80 hb100 b32 G2 MEAN qs f16", F32, 1, 3, 1000, 80, 100, 32, 2, MEAN, true, true, F16, true, 0},
      {"f16 d256 hb256 b16 G2 MEAN (streamed)", F16, 1, 3, 1000, 256, 256, 16, 2, MEAN, true, true, F16, true, 0},
      {"f32 d256 hb256 b32 G4 NORM (streamed)", F32, 1, 2, 1000, 256, 256, 32, 4, NORM, true, true, F32, false, 0},
      {"f16 d256 hb128 b16 G8 NORM", F16, 1, 2, 1000, 256, 128, 16, 8, NORM, true, true, F16, true, 0},
      {"f32 d5 hb16 b5 G2 MEAN", F32, 2, 2, 1000, 5, 16, 5, 2, MEAN, true, true, F32, false, 0},
      {"f16 d5 hb16 b5 G4 NORM", F16, 2, 2, 1000, 5, 16, 5, 4, NORM, true, true, F16, true, 0},
      {"f32 d1 hb64 b16 G2 NORM", F32, 1, 2, 1000, 1, 64, 16, 2, NORM, true, true, F32, false, 0},
      {"bf16 d128 hb128 b16 G1 NORM (wts, no qs)", BF16, 2, 2, 1000, 128, 128, 16, 1, NORM, true, true, BF16, true, 0},
      {"f16 d128 hb128 b16 G2 perm only", F16, 2, 2, 1000, 128, 128, 16, 2, MEAN, false, false, F16, true, 0},
      {"f16 d128 hb128 b16 G2 NORM wts only", F16, 2, 2, 1000, 128, 128, 16, 2, NORM, true, false, F16, true, 0},
      {"f16 d80 hb128 b16 G2 MEAN (qs_ld 48)", F16, 1, 3, 1000, 80, 128, 16, 2, MEAN, true, true, F16, true, 0},
      {"f32 d124 hb64 b16 G8 MEAN (short group)", F32, 1, 3, 1000, 124, 64, 16, 8, MEAN, true, true, F32, false, 0},
      {"f16 d126 hb128 b16 G4 MEAN (d % 4)", F16, 1, 3, 1000, 126, 128, 16, 4, MEAN, true, true, F16, true, 0},
      {"f16 d126 hb128 b16 G4 NORM (d % 4)", F16, 1, 3, 1000, 126, 128, 16, 4, NORM, true, true, F16, true, 0},
      {"bf16 d256 hb100 b32 G2 MEAN", BF16, 1, 2, 1000, 256, 100, 32, 2, MEAN, true, true, BF16, true, 0},
      {"f16 d64 hb300 b16 G2 NORM", F16, 1, 3, 1000, 64, 300, 16, 2, NORM, true, true, F16, true, 0},
      {"f16 d128 hb1000 b16 G2 MEAN (streamed)", F16, 1, 2, 1000, 128, 1000, 16, 2, MEAN, true, true, F16, true, 0},
      {"f16 d128 hb3 b5 G2 MEAN", F16, 1, 2, 1000, 128, 3, 5, 2, MEAN, true, true, F16, true, 0},
      {"f16 d32 hb1 b16 G8 NORM", F16, 1, 2, 1000, 32, 1, 16, 8, NORM, true, true, F16, true, 0},
      {"f16 d96 hb128 b32 G2 NORM qs f32", F16, 1, 3, 1000, 96, 128, 32, 2, NORM, true, true, F32, false, 0},
      {"f16 d128 hb128 b16 G2 MEAN (Q unaligned)", F16, 1, 3, 1000, 128, 128, 16, 2, MEAN, true, true, F16, true, 1},
      {"f32 d64 hb128 b8 G4 NORM (Q unaligned)", F32, 1, 3, 1000, 64, 128, 8, 4, NORM, true, true, F32, false, 1},
      {"f16 d100 hb128 b16 G4 MEAN (8-byte pieces)", F16, 1, 3, 1000, 100, 128, 16, 4, MEAN, true, true, F16, true, 0},
      {"f16 d128 hb128 b16 G2 NORM (Q 8-aligned)", F16, 1, 3, 1000, 128, 128, 16, 2, NORM, true, true, F16, true, 4},
      {"bf16 d64 hb130 b16 G2 NORM (R 4-byte pieces)", BF16, 1, 3, 1000, 64, 130, 16, 2, NORM, true, true, BF16, true, 0},
      {"f16 d128 hb128 b16 G4 MEAN (seq 100)", F16, 2, 3, 100, 128, 128, 16, 4, MEAN, true, true, F16, true, 0},
      {"f32 d256 hb64 b8 G1 MEAN (streamed, G 1)", F32, 1, 3, 1000, 256, 64, 8, 1, MEAN, true, true, F32, false, 0},
      {"f16 d128 hb128 b16 G2 MEAN seq 8192", F16, 1, 4, 8192, 128, 128, 16, 2, MEAN, true, true, F16, true, 0},
      /* the benchmark's grids: small (the launch picks TB 2 or 4) and large (8) */
      {"f16 d64 hb128 b16 G2 MEAN 4x16 seq 1024", F16, 4, 16, 1024, 64, 128, 16, 2, MEAN, true, true, F16, true, 0},
      {"f16 d128 hb128 b16 G2 NORM 4x16 seq 1024", F16, 4, 16, 1024, 128, 128, 16, 2, NORM, true, true, F16, true, 0},
      {"f16 d64 hb128 b16 G2 NORM 4x16 seq 2048", F16, 4, 16, 2048, 64, 128, 16, 2, NORM, true, true, F16, true, 0},
      {"f16 d128 hb128 b16 G4 MEAN 4x16 seq 2048", F16, 4, 16, 2048, 128, 128, 16, 4, MEAN, true, true, F16, true, 0},
      {"f16 d128 hb128 b16 G2 NORM 4x16 seq 8192", F16, 4, 16, 8192, 128, 128, 16, 2, NORM, true, true, F16, true, 0},
      /* one hash bit; 32 bits at d 256 (TB 2 and 4 too many threads) */
      {"f16 d64 hb128 b1 G2 NORM", F16, 2, 3, 1000, 64, 128, 1, 2, NORM, true, true, F16, true, 0},
      {"bf16 d128 hb128 b1 G8 MEAN", BF16, 1, 2, 1000, 128, 128, 1, 8, MEAN, true, true, BF16, true, 0},
      {"f32 d256 hb128 b32 G8 MEAN", F32, 1, 2, 1000, 256, 128, 32, 8, MEAN, true, true, F32, false, 0},
      {"bf16 d256 hb128 b16 G4 NORM qs f32", BF16, 1, 2, 1000, 256, 128, 16, 4, NORM, true, true, F32, false, 0},
      /* G 8 with one fused column per thread (TB 2, 4), qs unaligned rows */
      {"f16 d72 hb128 b16 G8 NORM (qs_ld 9)", F16, 1, 3, 1000, 72, 128, 16, 8, NORM, true, true, F16, false, 0},
      {"f32 d3 hb128 b32 G2 MEAN", F32, 1, 3, 1000, 3, 128, 32, 2, MEAN, true, true, F32, false, 0},
      {"bf16 d66 hb96 b12 G1 MEAN (wts, no qs)", BF16, 2, 2, 1000, 66, 96, 12, 1, MEAN, true, false, BF16, true, 0},
  };
  // clang-format on
  int passed = 0, failed = 0;
  uint64_t seed = 1;
  for (const Case &c : cases) (compare(c, seed++) ? passed : failed)++;
  printf("%d passed, %d failed\n", passed, failed);

  /* old and new (at its own TB, then at each TB), us per run */
  printf("\nbatch 4, heads 16, f16, hash_block 128, hash_bits 16, qs f16 (rows padded to 16):\n");
  struct Shape {
    int seq, d, G;
    da_fusion fusion;
  };
  const Shape shapes[] = {{1024, 64, 2, MEAN},  {1024, 128, 2, MEAN}, {2048, 64, 2, MEAN},
                          {2048, 128, 2, MEAN}, {1024, 64, 2, NORM},  {1024, 128, 2, NORM},
                          {2048, 64, 2, NORM},  {2048, 128, 2, NORM}, {8192, 128, 2, MEAN},
                          {8192, 128, 2, NORM}, {8192, 128, 4, MEAN}, {8192, 128, 4, NORM},
                          {8192, 64, 2, MEAN},  {8192, 64, 2, NORM}};
  for (const Shape &sh : shapes) {
    const Case c = {"bench", F16, 4, 16, sh.seq, sh.d, 128, 16, sh.G, sh.fusion, true, true, F16, true, 0};
    std::mt19937_64 rng(99);
    Bufs b;
    setup(c, b, rng);
    const float t_old = time_us(c, b, 0), t_new = time_us(c, b, 1);
    const double bytes =
        (double)c.batch * c.heads * c.seq * c.d * 2 + (double)b.qs_bytes + (double)b.perm_n * 8;
    printf("seq %4d, d %3d, G %d, %s: old %6.1f us, new %6.1f us (%4.0f GB/s), old/new %5.2fx |",
           c.seq, c.d, c.G, c.fusion == MEAN ? "MEAN" : "NORM", t_old, t_new,
           bytes / (t_new * 1e3), t_old / t_new);
    for (const int tb : {2, 4, 8})
      printf(" tb%d %6.1f", tb, time_us(c, b, 1, tb));
    printf("\n");
    teardown(b);
  }
  return failed ? 1 : 0;
}
