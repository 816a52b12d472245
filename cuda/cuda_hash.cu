/* SPEC steps 2-6 on the GPU (codes bit-identical to lib/hash.c), the fused
 * Q, and the helpers of the GEMM algorithm. */
#include <math.h>

#include "cuda_dev.cuh"

#define HASH_RCHUNK 64

/* One block per (tile, head, batch), one thread per column: the thread
 * keeps the hash_bits sums of its column in registers and runs over the
 * tile's rows in order (the projections come through shared memory in
 * chunks of rows), so each p_b is the same sequential fma chain as in
 * lib/hash.c. Then keys, the rank sort, the fusion weights and, when qs is
 * given, the fused Q rows of the tile. */
template <int NB, int GS>
__global__ void __launch_bounds__(256)
    dac_hash_kernel(const void *__restrict__ q, da_dtype dt, int heads, int seq_q, int d,
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

extern "C" cudaError_t dac_launch_hash(const void *q, da_dtype dt, int batch, int heads, int seq_q,
                                       int d, const float *proj, int hash_bits, int hash_block,
                                       int G, da_fusion fusion, int *perm, float *wts, void *qs,
                                       da_dtype qs_dt, int qs_ld, int ng, cudaStream_t s) {
  const int n_tiles = (seq_q + hash_block - 1) / hash_block;
  const int threads = d <= 32 ? 32 : (d + 31) / 32 * 32;
  dim3 grid(n_tiles, heads, batch);
#define DAC_HASH_LAUNCH(NB, GS)                                                               \
  dac_hash_kernel<NB, GS><<<grid, threads, 0, s>>>(q, dt, heads, seq_q, d, proj, hash_bits,   \
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

/* qx[bh][r][c] = Qs[r][g(c)] * a_c: the logits Qs Kf^T written as qx K^T. */
__global__ void dac_expand_q_kernel(dac_args a, void *__restrict__ qx, da_dtype qx_dt) {
  const size_t total = (size_t)a.batch * a.heads * a.seq_q * a.d;
  for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
       idx += (size_t)gridDim.x * blockDim.x) {
    const int c = (int)(idx % a.d);
    const size_t row = idx / a.d;
    const int r = (int)(row % a.seq_q);
    const size_t bh = row / a.seq_q;
    const size_t poff = (bh * a.n_tiles + r / a.hash_block) * (size_t)a.d;
    int pos = 0;
    for (int i = 0; i < a.d; i++)
      if (a.perm[poff + i] == c) pos = i;
    const int i0 = (pos / a.G) * a.G, i1 = min(i0 + a.G, a.d);
    float num = 0.0f, den = 0.0f;
    for (int i = i0; i < i1; i++) {
      const int cc = a.perm[poff + i];
      num += dac_ld(a.q, a.dt, row * a.d + cc);
      den += a.wts[poff + cc];
    }
    dac_st(qx, qx_dt, idx, num / den * a.wts[poff + c]);
  }
}

extern "C" cudaError_t dac_launch_expand_q(const dac_args *a, void *qx, cudaStream_t s) {
  const size_t total = (size_t)a->batch * a->heads * a->seq_q * a->d;
  const size_t blocks = (total + 255) / 256;
  dac_expand_q_kernel<<<(unsigned)(blocks < 65536 ? blocks : 65536), 256, 0, s>>>(*a, qx, a->dt);
  return cudaGetLastError();
}

__device__ __forceinline__ float dac_block_reduce(float v, bool is_max, float *red) {
  for (int o = 16; o > 0; o >>= 1) {
    const float w = __shfl_xor_sync(0xffffffffu, v, o);
    v = is_max ? fmaxf(v, w) : v + w;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = red[0];
  for (int i = 1; i < nw; i++) v = is_max ? fmaxf(v, red[i]) : v + red[i];
  return v;
}

/* One block per row of logits: p = softmax(scale * s + mask). */
__global__ void dac_softmax_kernel(const float *__restrict__ sl, void *__restrict__ p, da_dtype pdt,
                                   int seq_q, int seq_k, int causal, float scale) {
  __shared__ float red[32];
  const size_t row = blockIdx.x;
  const int i = (int)(row % seq_q);
  const int nvis = causal ? max(0, min(seq_k, i + (seq_k - seq_q) + 1)) : seq_k;
  const float *sr = sl + row * seq_k;
  const size_t po = row * seq_k;
  float m = -INFINITY;
  for (int j = threadIdx.x; j < nvis; j += blockDim.x) m = fmaxf(m, sr[j] * scale);
  m = dac_block_reduce(m, true, red);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < nvis; j += blockDim.x) sum += expf(sr[j] * scale - m);
  sum = dac_block_reduce(sum, false, red);
  const float inv = nvis > 0 ? 1.0f / sum : 0.0f;
  for (int j = threadIdx.x; j < seq_k; j += blockDim.x)
    dac_st(p, pdt, po + j, j < nvis ? expf(sr[j] * scale - m) * inv : 0.0f);
}

extern "C" cudaError_t dac_launch_softmax(const float *sl, void *p, da_dtype pdt, long long rows,
                                          int seq_q, int seq_k, int causal, float scale,
                                          cudaStream_t s) {
  if (rows <= 0) return cudaSuccess;
  dac_softmax_kernel<<<(unsigned)rows, 256, 0, s>>>(sl, p, pdt, seq_q, seq_k, causal, scale);
  return cudaGetLastError();
}
