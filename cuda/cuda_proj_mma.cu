/* SPDX-License-Identifier: Apache-2.0 */
/* DA_STRATEGY_PROJECTION (SPEC 1c) on CUDA, f16/bf16 on tensor cores: the
 * per-call projections Q_h A_h and K_kv(h) B_h (per query head) that the
 * tensor-core attention kernels read, with mma.sync m16n8k16 instead of the
 * SIMT f32 kernel (cuda_proj.cu), which stays for f32 outputs, other head
 * dims and ranks. The projection's entries are rounded to the dtype (as the
 * projected rows already are when stored); products are summed in f32.
 *
 * A block of 4 warps holds one (batch, head)'s projection matrix, stored
 * transposed ([R][D], the mma's column-major B) in shared memory, and runs
 * over TPB tiles of 64 source rows: the tile comes into shared memory
 * (16-byte loads where the tensor's base and strides allow, else element
 * by element through the strides), then each warp multiplies its 16 rows
 * by the matrix (ldmatrix for both operands) and writes its 16 x R outputs.
 * Rows past the sequence's length (packed sequences) come out zero. */
#include "cuda_mma.cuh"

template <typename T, int D, int R>
__global__ void __launch_bounds__(128)
    dac_proj_mma_kernel(dac_args a, const float *pj, int is_k, T *out, int tpb, int vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  typedef dac_mma_op<T> op;
  constexpr int LD = D + 8; /* row pitch in elements: ldmatrix rows fall in distinct banks */
  extern __shared__ __align__(16) unsigned char pm_smem[];
  T *pt = reinterpret_cast<T *>(pm_smem); /* [R][LD]: column k of the projection */
  T *xs = pt + R * LD;                    /* [64][LD]: the tile's source rows */
  const int b = blockIdx.z, h = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int n = is_k ? a.seq_k : a.seq_q;
  const dac_seq sq = dac_seq_of(a, b);
  const int len = min(n, is_k ? sq.lk : sq.lq);
  const long long *st = is_k ? a.kst : a.qst;
  const long long xh = is_k ? h / (a.heads / a.kv_heads) : h;
  const long long rowbase = (long long)b * st[0] + xh * st[1] + (is_k ? sq.k0 : sq.q0) * st[2];
  const T *x = (const T *)(is_k ? a.k : a.q);
  const float *P = pj + ((size_t)h * 2 + is_k) * (size_t)D * R; /* [D][R] */
  for (int e = tid; e < D * R; e += 128) {
    const int c = e / R, k = e % R;
    pt[k * LD + c] = dac_cvt<T>::from(P[e]);
  }
  T *o = out + ((size_t)b * a.heads + h) * (size_t)n * R;
  for (int t = 0; t < tpb; t++) {
    const int j0 = ((int)blockIdx.x * tpb + t) * 64;
    if (j0 >= n) break;
    __syncthreads(); /* pt written (first tile); xs free (later ones) */
    constexpr int CPR = D / 8;
    for (int e = tid; e < 64 * CPR; e += 128) {
      const int jj = e / CPR, c = (e % CPR) * 8, j = j0 + jj;
      uint4 v = make_uint4(0u, 0u, 0u, 0u);
      if (j < len) {
        const T *src = x + rowbase + (long long)j * st[2] + c;
        if (vec) {
          v = *reinterpret_cast<const uint4 *>(src);
        } else {
          __align__(16) T tmp[8];
#pragma unroll
          for (int u = 0; u < 8; u++) tmp[u] = src[u];
          v = *reinterpret_cast<const uint4 *>(tmp);
        }
      }
      *reinterpret_cast<uint4 *>(xs + jj * LD + c) = v;
    }
    __syncthreads();
    float acc[R / 8][4];
#pragma unroll
    for (int i = 0; i < R / 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
#pragma unroll
    for (int kc = 0; kc < D / 16; kc++) {
      uint32_t af[4];
      ldsm_x4(af, xs + (16 * warp + lane % 16) * LD + kc * 16 + (lane / 16) * 8);
#pragma unroll
      for (int nt = 0; nt < R / 8; nt += 2) {
        uint32_t bf[4]; /* b0, b1 of n-tile nt, then of nt + 1 */
        const int m = lane / 8;
        ldsm_x4(bf, pt + (nt * 8 + (m / 2) * 8 + lane % 8) * LD + kc * 16 + (m % 2) * 8);
        op::mma(acc[nt], af, bf[0], bf[1]);
        op::mma(acc[nt + 1], af, bf[2], bf[3]);
      }
    }
    const int r0 = j0 + 16 * warp + lane / 4, r1 = r0 + 8, c0 = 2 * (lane % 4);
#pragma unroll
    for (int nt = 0; nt < R / 8; nt++) {
      if (r0 < n)
        *reinterpret_cast<uint32_t *>(o + (size_t)r0 * R + nt * 8 + c0) = op::pack(acc[nt][0], acc[nt][1]);
      if (r1 < n)
        *reinterpret_cast<uint32_t *>(o + (size_t)r1 * R + nt * 8 + c0) = op::pack(acc[nt][2], acc[nt][3]);
    }
  }
#endif
}

template <typename T, int D, int R>
static cudaError_t launch_proj_mma(const dac_args *a, const float *pj, int is_k, void *out, int vec,
                                   cudaStream_t s) {
  const int n = is_k ? a->seq_k : a->seq_q;
  const int tiles = (n + 63) / 64;
  /* a block per 4 tiles (256 rows) amortises loading its matrix; fewer
   * where that would leave the GPU's SMs short of blocks */
  const long long bh = (long long)a->batch * a->heads;
  int tpb = 4;
  while (tpb > 1 && bh * ((tiles + tpb - 1) / tpb) < 264) tpb /= 2;
  const size_t smem = (size_t)(R + 64) * (D + 8) * sizeof(T);
  auto kern = dac_proj_mma_kernel<T, D, R>;
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (e != cudaSuccess) return e;
  dim3 grid((unsigned)((tiles + tpb - 1) / tpb), a->heads, a->batch);
  kern<<<grid, 128, smem, s>>>(*a, pj, is_k, (T *)out, tpb, vec);
  return cudaGetLastError();
}

template <typename T, int D>
static cudaError_t launch_proj_mma_d(const dac_args *a, const float *pj, int is_k, void *out, int vec,
                                     cudaStream_t s) {
  switch (a->pr) {
  case 16: return launch_proj_mma<T, D, 16>(a, pj, is_k, out, vec, s);
  case 32: return launch_proj_mma<T, D, 32>(a, pj, is_k, out, vec, s);
  case 64: return launch_proj_mma<T, D, 64>(a, pj, is_k, out, vec, s);
  case 128: return D == 128 ? launch_proj_mma<T, D, D>(a, pj, is_k, out, vec, s) : cudaErrorInvalidValue;
  default: return cudaErrorInvalidValue;
  }
}

/* The projections of dac_launch_proj into out (the dtype, [batch][heads]
 * [rows][pr]) on tensor cores, for dac_mma_proj_supported shapes. */
extern "C" cudaError_t dac_launch_proj_mma(const dac_args *a, const float *pj, int is_k, void *out,
                                           cudaStream_t s) {
  const long long n = is_k ? a->seq_k : a->seq_q;
  if (n <= 0 || a->heads <= 0 || a->batch <= 0) return cudaSuccess;
  if (!dac_mma_proj_supported(a->dt, a->d, a->pr)) return cudaErrorInvalidValue;
  const long long *st = is_k ? a->kst : a->qst;
  const void *x = is_k ? a->k : a->q;
  const int vec = ((uintptr_t)x & 15u) == 0 && st[0] % 8 == 0 && st[1] % 8 == 0 && st[2] % 8 == 0;
  if (a->dt == DA_F16)
    return a->d == 64 ? launch_proj_mma_d<__half, 64>(a, pj, is_k, out, vec, s)
                      : launch_proj_mma_d<__half, 128>(a, pj, is_k, out, vec, s);
  return a->d == 64 ? launch_proj_mma_d<__nv_bfloat16, 64>(a, pj, is_k, out, vec, s)
                    : launch_proj_mma_d<__nv_bfloat16, 128>(a, pj, is_k, out, vec, s);
}
