/* SPDX-License-Identifier: Apache-2.0 */
/* The hash kernel, SPEC steps 2-6 on the GPU (codes bit-identical to
 * lib/hash.c) and the fused Q, and its launch: a template that the
 * cuda_hash_g<G>.cu files instantiate, each for one G at every NB and TB
 * (DAC_HASH_INSTANTIATE). Only those files include it. */
#ifndef DA_CUDA_HASH_KERNEL_CUH
#define DA_CUDA_HASH_KERNEL_CUH

#include <stdint.h>

#include <type_traits>

#include "cuda_hash.cuh"

/* Per-column state after the chains; it lives where R was (R is no longer
 * needed then), so the block's shared memory is Q and R only. */
struct dac_hash_cols {
  float a[256]; /* fusion weight a_c */
  union {
    uint32_t code[256]; /* code of column c: the OR of its bit groups' bits */
    int perm[256];      /* after the sort: pi (over code) */
  };
};

/* Shared memory holds a tile's Q rows in their own dtype, in 16-byte units
 * (8 columns of f16/bf16, 4 of f32): unit u of row r at byte
 * (u * rpad + r) * 16. A column's next row is a fixed 16 bytes on (the
 * unrolled loops address rows with immediates, whatever d is), a row
 * piece lands with one 16-byte cp.async, and with rpad odd a warp's reads
 * of one row from consecutive units hit distinct banks. R passes through
 * two slots of DAC_HASH_CK rows, held as in global memory: R[b][r] at float
 * b * CK + r % CK of its chunk's slot. */

/* Four consecutive columns at p as f32. */
template <da_dtype DT>
__device__ __forceinline__ float4 dac_hash_ld4(const char *p) {
  if constexpr (DT == DA_F32) {
    return *reinterpret_cast<const float4 *>(p);
  } else {
    const uint2 w = *reinterpret_cast<const uint2 *>(p);
    if constexpr (DT == DA_F16) {
      const float2 a = dac_cvt<__half>::unpack(w.x), b = dac_cvt<__half>::unpack(w.y);
      return make_float4(a.x, a.y, b.x, b.y);
    } else {
      /* bf16 -> f32 by shifts: exact, as dac_cvt's __bfloat1622float2,
       * which compiles this kernel to other SASS than the one checked
       * and timed on the GPU */
      return make_float4(__uint_as_float(w.x << 16), __uint_as_float(w.x & 0xffff0000u),
                         __uint_as_float(w.y << 16), __uint_as_float(w.y & 0xffff0000u));
    }
  }
}

template <da_dtype DT>
__device__ __forceinline__ float dac_hash_ld1(const char *p) {
  if constexpr (DT == DA_F32)
    return *reinterpret_cast<const float *>(p);
  else if constexpr (DT == DA_F16)
    return __half2float(*reinterpret_cast<const __half *>(p));
  else
    return __uint_as_float((uint32_t)(*reinterpret_cast<const uint16_t *>(p)) << 16);
}

/* The sequential chains of one thread over the n <= CK rows of a chunk:
 * hash bits bit0..bit0+TB-1 of four adjacent columns, row after row, each
 * step one __fmaf_rn as in lib/hash.c; with NRM the columns' sums of
 * squares too. qp: the columns in the chunk's first row; rp: R[bit0] in
 * the chunk's slot. Four rows per step: 4 + TB loads feed 16 TB fmas. */
template <int TB, bool NRM, da_dtype DT>
__device__ __forceinline__ void dac_hash_chains(const char *qp, const float *rp, int n,
                                                float (&acc)[TB][4], float (&nr)[4]) {
  constexpr int CK = DAC_HASH_CK;
  int r = 0;
#pragma unroll(dac_hash_tb<TB>::UNROLL)
  for (; r + 4 <= n; r += 4) {
    float4 xv[4], rv[TB];
#pragma unroll
    for (int u = 0; u < 4; u++) xv[u] = dac_hash_ld4<DT>(qp + (r + u) * 16);
#pragma unroll
    for (int j = 0; j < TB; j++) rv[j] = *reinterpret_cast<const float4 *>(rp + j * CK + r);
#pragma unroll
    for (int u = 0; u < 4; u++) {
      const float xs[4] = {xv[u].x, xv[u].y, xv[u].z, xv[u].w};
#pragma unroll
      for (int j = 0; j < TB; j++) {
        const float rk = u == 0 ? rv[j].x : u == 1 ? rv[j].y : u == 2 ? rv[j].z : rv[j].w;
#pragma unroll
        for (int k = 0; k < 4; k++) acc[j][k] = __fmaf_rn(rk, xs[k], acc[j][k]);
      }
      if constexpr (NRM) {
#pragma unroll
        for (int k = 0; k < 4; k++) nr[k] = __fmaf_rn(xs[k], xs[k], nr[k]);
      }
    }
  }
  for (; r < n; r++) {
    const float4 xv = dac_hash_ld4<DT>(qp + r * 16);
    const float xs[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
    for (int j = 0; j < TB; j++) {
      const float rk = rp[j * CK + r];
#pragma unroll
      for (int k = 0; k < 4; k++) acc[j][k] = __fmaf_rn(rk, xs[k], acc[j][k]);
    }
    if constexpr (NRM) {
#pragma unroll
      for (int k = 0; k < 4; k++) nr[k] = __fmaf_rn(xs[k], xs[k], nr[k]);
    }
  }
}

template <int TB, bool NRM>
__device__ __forceinline__ void dac_hash_chains_dt(da_dtype dt, const char *qp, const float *rp,
                                                   int n, float (&acc)[TB][4], float (&nr)[4]) {
  if (dt == DA_F16)
    dac_hash_chains<TB, NRM, DA_F16>(qp, rp, n, acc, nr);
  else if (dt == DA_BF16)
    dac_hash_chains<TB, NRM, DA_BF16>(qp, rp, n, acc, nr);
  else
    dac_hash_chains<TB, NRM, DA_F32>(qp, rp, n, acc, nr);
}

/* Step 4 in one warp: (key << 8 | c) is unique per column and orders as
 * (key, c) does, so a bitonic network over EPL of them per lane (padding
 * above every real one) gives pi, d log^2 d work instead of the d^2 of
 * counting ranks. Reads the codes, writes pi over them. */
template <typename T, int EPL>
__device__ __forceinline__ void dac_hash_sort(dac_hash_cols &sm, int d) {
  const int lane = threadIdx.x % 32;
  T v[EPL];
#pragma unroll
  for (int k = 0; k < EPL; k++) {
    const int i = lane * EPL + k;
    if (i < d) {
      uint32_t key = sm.code[i];
      key ^= key >> 1;
      key ^= key >> 2;
      key ^= key >> 4;
      key ^= key >> 8;
      key ^= key >> 16;
      v[k] = (T)key << 8 | (T)i;
    } else {
      v[k] = ~(T)0;
    }
  }
  __syncwarp();
#pragma unroll
  for (int size = 2; size <= 32 * EPL; size *= 2) {
#pragma unroll
    for (int j = size / 2; j > 0; j /= 2) {
      if (j < EPL) {
#pragma unroll
        for (int k = 0; k < EPL; k++) {
          if (k & j) continue;
          const bool up = ((lane * EPL + k) & size) == 0;
          const bool lt = v[k] < v[k | j];
          const T lo = lt ? v[k] : v[k | j], hi = lt ? v[k | j] : v[k];
          v[k] = up ? lo : hi;
          v[k | j] = up ? hi : lo;
        }
      } else {
#pragma unroll
        for (int k = 0; k < EPL; k++) {
          const int i = lane * EPL + k;
          const T o = __shfl_xor_sync(0xffffffffu, v[k], j / EPL);
          const bool keep_min = ((i & j) == 0) == ((i & size) == 0);
          v[k] = keep_min == (o < v[k]) ? o : v[k];
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < EPL; k++) {
    const int i = lane * EPL + k;
    if (i < d) sm.perm[i] = (int)(v[k] & 0xff);
  }
}

/* Where a block's tile comes from and how its threads share the copying. */
struct dac_hash_geom {
  const void *q;
  int es, d;
  size_t qoff; /* the tile's first element in q */
  long long rs; /* elements from one row to the next (d when dense) */
  int rpad;    /* rows of a Q slot (odd) */
  int pb;      /* bytes per cp.async of a Q row piece: 16 or 8; 0: element by element */
  /* this thread's share of a row: piece lp (pb bytes; 4 columns when pb = 0)
   * of rows lr0, lr0 + rstep, ... */
  int lp, lr0, rstep;
};

template <int PB>
__device__ __forceinline__ void dac_hash_copy_rows(const char *src, size_t sstep, char *dst,
                                                   int dstep, int cnt) {
  int i = 0;
  for (; i + 4 <= cnt; i += 4) {
#pragma unroll
    for (int u = 0; u < 4; u++) dac_cp_async<PB>(dst + u * dstep, src + u * sstep, true);
    src += 4 * sstep;
    dst += 4 * dstep;
  }
  for (; i < cnt; i++, src += sstep, dst += dstep) dac_cp_async<PB>(dst, src, true);
}

/* Tile rows [a, b) of Q into slot, local row r - base. */
__device__ __forceinline__ void dac_hash_copy_q(const dac_hash_geom &g, char *slot, int a, int b,
                                                int base) {
  const int r0 = a + g.lr0;
  if (g.lr0 >= g.rstep || r0 >= b) return;
  const int cnt = (b - r0 + g.rstep - 1) / g.rstep;
  if (g.pb) {
    const int byte = g.lp * g.pb;
    const char *src = static_cast<const char *>(g.q) + (g.qoff + (size_t)r0 * g.rs) * g.es + byte;
    char *dst = slot + ((size_t)(byte / 16) * g.rpad + (r0 - base)) * 16 + byte % 16;
    const size_t sstep = (size_t)g.rstep * g.rs * g.es;
    if (g.pb == 16)
      dac_hash_copy_rows<16>(src, sstep, dst, g.rstep * 16, cnt);
    else
      dac_hash_copy_rows<8>(src, sstep, dst, g.rstep * 16, cnt);
    return;
  }
  /* columns 4 lp .. 4 lp + 3, 0 past d */
  const int c0 = 4 * g.lp, byte = c0 * g.es;
  char *dst = slot + ((size_t)(byte / 16) * g.rpad + (r0 - base)) * 16 + byte % 16;
  for (int r = r0; r < b; r += g.rstep, dst += g.rstep * 16) {
    const size_t e = g.qoff + (size_t)r * g.rs + c0;
    uint32_t w[4];
    if (g.es == 4) {
#pragma unroll
      for (int k = 0; k < 4; k++)
        w[k] = c0 + k < g.d ? static_cast<const uint32_t *>(g.q)[e + k] : 0u;
      *reinterpret_cast<uint4 *>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
#pragma unroll
      for (int k = 0; k < 4; k++)
        w[k] = c0 + k < g.d ? static_cast<const uint16_t *>(g.q)[e + k] : 0u;
      *reinterpret_cast<uint2 *>(dst) = make_uint2(w[0] | w[1] << 16, w[2] | w[3] << 16);
    }
  }
}

/* R of the n tile rows from a (all NB bits, 0 past hash_bits) into the
 * slot rs. rvec: 16-byte pieces (hash_block % 4 == 0, proj aligned), else
 * 4-byte ones. */
template <int NB>
__device__ __forceinline__ void dac_hash_copy_r(const float *proj, int hash_bits, int hash_block,
                                                bool rvec, float *rs, int a, int n) {
  constexpr int CK = DAC_HASH_CK;
  const int per = rvec ? 4 : 1, ppb = CK / per; /* rows per piece, pieces per bit */
  for (int i = threadIdx.x; i < NB * ppb; i += blockDim.x) {
    const int bb = i / ppb, rr = i % ppb * per;
    if (rr >= n) continue;
    const bool fill = bb < hash_bits;
    const float *src = fill ? proj + (size_t)bb * hash_block + a + rr : proj;
    if (rvec)
      dac_cp_async<16>(rs + bb * CK + rr, src, fill);
    else
      dac_cp_async<4>(rs + bb * CK + rr, src, fill);
  }
}

/* Store OV consecutive values of a fused-Q row: one 2-, 4-, 8- or 16-byte
 * store (two for 8 f32) when vec, else element by element below lim. */
template <int OV>
__device__ __forceinline__ void dac_hash_store(void *qs, da_dtype t, size_t i, const float (&v)[OV],
                                               bool vec, int lim) {
  if constexpr (OV == 1) {
    dac_st(qs, t, i, v[0]);
    return;
  }
  if (!vec) {
#pragma unroll
    for (int j = 0; j < OV; j++)
      if (j < lim) dac_st(qs, t, i + j, v[j]);
    return;
  }
  if (t == DA_F32) {
    float *p = static_cast<float *>(qs) + i;
    if constexpr (OV >= 4) {
#pragma unroll
      for (int j = 0; j < OV; j += 4)
        *reinterpret_cast<float4 *>(p + j) = make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]);
    } else {
      *reinterpret_cast<float2 *>(p) = make_float2(v[0], v[1]);
    }
    return;
  }
  uint32_t w[OV > 1 ? OV / 2 : 1];
#pragma unroll
  for (int j = 0; j < OV / 2; j++)
    w[j] = t == DA_F16 ? dac_cvt<__half>::pack(v[2 * j], v[2 * j + 1])
                       : dac_cvt<__nv_bfloat16>::pack(v[2 * j], v[2 * j + 1]);
  char *p = static_cast<char *>(qs) + i * 2;
  if constexpr (OV == 8)
    *reinterpret_cast<uint4 *>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  else if constexpr (OV == 4)
    *reinterpret_cast<uint2 *>(p) = make_uint2(w[0], w[1]);
  else
    *reinterpret_cast<uint32_t *>(p) = w[0];
}

/* Per-thread state of the fused Q: OV = SRC / G consecutive columns of qs
 * (at least 1), i.e. SRC source columns (their byte offsets in a slot) and
 * OV denominators, all in registers. */
template <int GS, int OV>
struct dac_hash_fuse_cols {
  int off[OV][GS];
  float dv[OV];   /* the denominator, or 1 / it where that is exact (bit j of inv) */
  uint32_t inv;   /* bit j: dv[j] is the reciprocal */
  uint32_t vmask; /* bit j * GS + i: source i of column j exists */
  int nvalid;     /* columns below ng */
  bool fast;      /* all OV columns full groups with an exact reciprocal */
};

/* The fused Q of rows RB rb .. RB rb + RB - 1 for rb = tb, tb + nb, ... of
 * the n local rows of the slot x, into qs from element qi (row stride
 * qs_ld). RB (4 or 2) consecutive rows per step, so that every source's RB
 * reads are one address plus immediates (the slot has room for them past
 * n: its rows are padded to a multiple of 4, plus one). num is
 * summed from 0.0f in the group's order and divided as before; a
 * denominator that is a power of two (MEAN: G, or a short last group's size
 * when it is one) is applied as a multiplication by its exact reciprocal,
 * which rounds the same quotient the same way. Not FAST: a missing member
 * adds +0.0f, which leaves a sum that started at +0.0f (so is never -0.0f)
 * unchanged. */
template <int GS, int OV, int RB, bool FAST, da_dtype DT>
__device__ __forceinline__ void
dac_hash_fuse_rows(const char *x, int n, int tb, int nb, const dac_hash_fuse_cols<GS, OV> &f,
                   void *qs, da_dtype qs_dt, size_t qi, int qs_ld, bool vec, int lim) {
  for (int rb = tb; rb * RB < n; rb += nb) {
    const char *xr = x + rb * RB * 16;
    float v[RB][OV];
#pragma unroll
    for (int j = 0; j < OV; j++) {
      float num[RB];
#pragma unroll
      for (int u = 0; u < RB; u++) num[u] = 0.0f;
#pragma unroll
      for (int i = 0; i < GS; i++) {
        const char *src = xr + f.off[j][i];
        const bool on = FAST || ((f.vmask >> (j * GS + i)) & 1);
#pragma unroll
        for (int u = 0; u < RB; u++) {
          const float e = dac_hash_ld1<DT>(src + u * 16);
          num[u] += on ? e : 0.0f;
        }
      }
#pragma unroll
      for (int u = 0; u < RB; u++) {
        if (FAST)
          v[u][j] = num[u] * f.dv[j];
        else
          v[u][j] = j >= f.nvalid            ? 0.0f
                    : (f.inv >> j) & 1 ? num[u] * f.dv[j]
                                       : num[u] / f.dv[j];
      }
    }
#pragma unroll
    for (int u = 0; u < RB; u++)
      if (rb * RB + u < n)
        dac_hash_store<OV>(qs, qs_dt, qi + (size_t)(rb * RB + u) * qs_ld, v[u], vec, lim);
  }
}

template <int GS, int OV, int RB>
__device__ __forceinline__ void dac_hash_fuse_dt(da_dtype dt, const char *x, int n, int tb, int nb,
                                                 const dac_hash_fuse_cols<GS, OV> &f, void *qs,
                                                 da_dtype qs_dt, size_t qi, int qs_ld, bool vec,
                                                 int lim) {
#define DAC_HASH_FUSE(FAST, DT)                                                                    \
  dac_hash_fuse_rows<GS, OV, RB, FAST, DT>(x, n, tb, nb, f, qs, qs_dt, qi, qs_ld, vec, lim)
  if (dt == DA_F16) {
    if (f.fast)
      DAC_HASH_FUSE(true, DA_F16);
    else
      DAC_HASH_FUSE(false, DA_F16);
  } else if (dt == DA_BF16) {
    if (f.fast)
      DAC_HASH_FUSE(true, DA_BF16);
    else
      DAC_HASH_FUSE(false, DA_BF16);
  } else {
    if (f.fast)
      DAC_HASH_FUSE(true, DA_F32);
    else
      DAC_HASH_FUSE(false, DA_F32);
  }
#undef DAC_HASH_FUSE
}

/* One block per (tile, head, batch). Thread (cg, bg) runs the chains of
 * columns 4cg..4cg+3 and hash bits bg*TB..bg*TB+TB-1, so
 * ceil(hash_bits / TB) * ceil(d/4) threads share the d * hash_bits chains
 * (d = 128, 16 bits, TB = 8: 64 threads of 32 chains; TB = 2: 256 of 8),
 * each the same sequential fma over the rows in order as in lib/hash.c:
 * which thread owns a chain never changes a bit. The tile's Q and R
 * arrive by cp.async in chunks of CK rows, the next chunk in flight while
 * this one's chains run; Q stays whole (resident: when the fused Q will
 * read it again and it fits) or passes through two slots like R. Then the
 * codes (each bit group ORs its bits into its columns' codes), the sort
 * (one warp), the fusion weights and, when qs is given, the fused Q rows of
 * the tile, the last three shared by all the block's threads. */
template <int NB, int GS, int TB>
__global__ void __launch_bounds__(DAC_HASH_MAXT, dac_hash_tb<TB>::MINB)
    dac_hash_kernel(const void *__restrict__ q, const dac_qlayout ql, da_dtype dt, int heads, int seq_q, int d,
                    const float *__restrict__ proj, int hash_bits, int hash_block, int norm,
                    int n_tiles, int resident, int rpad, int pb, int rvec, int *__restrict__ perm,
                    float *__restrict__ wts, void *__restrict__ qs, da_dtype qs_dt, int qs_ld,
                    int ng, int qs_vec) {
  constexpr int CK = DAC_HASH_CK;
  static_assert(TB <= NB, "TB: at most NB");
  static_assert(sizeof(dac_hash_cols) <= 2 * NB * CK * sizeof(float), "R slots too small");
  extern __shared__ __align__(16) char dsm[];
  const int tid = threadIdx.x, nt = blockDim.x;
  const int tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int r0 = tile * hash_block;
  /* the sequence's rows (dense: seq_q from row 0); the tiles past its
   * length have nothing to do (the whole block returns, before any barrier) */
  int lq = seq_q;
  long long qrow0 = 0;
  if (ql.cu_q) {
    const long long c0 = dac_clampll(ql.cu_q[b], 0, ql.rows_q);
    const long long c1 = dac_clampll(ql.cu_q[b + 1], c0, ql.rows_q);
    qrow0 = c0;
    lq = (int)(c1 - c0 < seq_q ? c1 - c0 : seq_q);
  }
  if (r0 >= lq) return;
  const int rows = min(hash_block, lq - r0);
  const size_t bh = (size_t)b * heads + h;
  const int es = dt == DA_F32 ? 4 : 2;
  const int ncg = (d + 3) / 4;

  dac_hash_geom g;
  g.q = q;
  g.es = es;
  g.d = d;
  g.qoff = (size_t)((long long)b * ql.sb + (long long)h * ql.sh + (qrow0 + r0) * ql.sr);
  g.rs = ql.sr;
  g.rpad = rpad;
  g.pb = pb;
  const int npr = pb ? d * es / pb : ncg; /* pieces of a row */
  g.lp = tid % npr;
  g.lr0 = tid / npr;
  g.rstep = nt / npr;
  const size_t qslot = (size_t)((d * es + 15) / 16) * rpad * 16;
  char *qbuf = dsm;
  float *rbuf = reinterpret_cast<float *>(dsm + (resident ? 1 : 2) * qslot); /* 2 slots */
  dac_hash_cols &sm = *reinterpret_cast<dac_hash_cols *>(rbuf);

  const int nch = (rows + CK - 1) / CK;
  /* chunk k: Q in slot k % 2 (resident: rows k CK.. of the one slot), R in
   * slot k % 2 */
  dac_hash_copy_q(g, qbuf, 0, min(rows, CK), 0);
  dac_hash_copy_r<NB>(proj, hash_bits, hash_block, rvec, rbuf, 0, min(rows, CK));
  dac_cp_commit();

  const bool worker = tid < (hash_bits + TB - 1) / TB * ncg;
  const int cg = worker ? tid % ncg : 0, bg = worker ? tid / ncg : 0;
  const bool do_norm = norm && wts != nullptr && bg == 0;
  float acc[TB][4], nr[4];
#pragma unroll
  for (int j = 0; j < TB; j++)
#pragma unroll
    for (int k = 0; k < 4; k++) acc[j][k] = 0.0f;
#pragma unroll
  for (int k = 0; k < 4; k++) nr[k] = 0.0f;

  const int cbyte = 4 * cg * es; /* the thread's columns within a row */
  for (int k = 0; k < nch; k++) {
    const int a = k * CK, n = min(CK, rows - a);
    dac_cp_wait<0>();
    __syncthreads();
    /* the slots written here were last read before the barrier above */
    if (k + 1 < nch) {
      const int a1 = a + CK, n1 = min(CK, rows - a1);
      if (resident)
        dac_hash_copy_q(g, qbuf, a1, a1 + n1, 0);
      else
        dac_hash_copy_q(g, qbuf + ((k + 1) % 2) * qslot, a1, a1 + n1, a1);
      dac_hash_copy_r<NB>(proj, hash_bits, hash_block, rvec, rbuf + ((k + 1) % 2) * NB * CK, a1,
                          n1);
      dac_cp_commit();
    }
    if (worker) {
      const char *qp = resident
                           ? qbuf + ((size_t)(cbyte / 16) * rpad + a) * 16 + cbyte % 16
                           : qbuf + (k % 2) * qslot + (size_t)(cbyte / 16) * rpad * 16 + cbyte % 16;
      const float *rp = rbuf + (k % 2) * NB * CK + bg * TB * CK;
      if (do_norm)
        dac_hash_chains_dt<TB, true>(dt, qp, rp, n, acc, nr);
      else
        dac_hash_chains_dt<TB, false>(dt, qp, rp, n, acc, nr);
    }
  }
  /* the thread's bits of its four columns' codes */
  uint32_t bits[4];
#pragma unroll
  for (int k = 0; k < 4; k++) {
    bits[k] = 0;
#pragma unroll
    for (int j = 0; j < TB; j++) {
      const int bb = bg * TB + j;
      if (bb < hash_bits && acc[j][k] > 0.0f) bits[k] |= 1u << bb;
    }
  }
  __syncthreads(); /* R is done with: sm takes its place */
  /* bit group 0 stores the codes (and the weights), the others OR theirs in */
  if (worker && bg == 0) {
#pragma unroll
    for (int k = 0; k < 4; k++) {
      const int c = 4 * cg + k;
      if (c >= d) break;
      sm.code[c] = bits[k];
      sm.a[c] = do_norm ? sqrtf(nr[k]) : 1.0f;
    }
  }
  if (hash_bits > TB) {
    __syncthreads();
    if (worker && bg > 0) {
#pragma unroll
      for (int k = 0; k < 4; k++) {
        const int c = 4 * cg + k;
        if (c >= d) break;
        if (bits[k]) atomicOr(&sm.code[c], bits[k]);
      }
    }
  }
  __syncthreads();
  if (tid < 32) {
    using T = typename std::conditional<NB <= 16, uint32_t, unsigned long long>::type;
    if (d <= 32)
      dac_hash_sort<T, 1>(sm, d);
    else if (d <= 64)
      dac_hash_sort<T, 2>(sm, d);
    else if (d <= 128)
      dac_hash_sort<T, 4>(sm, d);
    else
      dac_hash_sort<T, 8>(sm, d);
  }
  __syncthreads();
  const size_t poff = (bh * (size_t)n_tiles + (size_t)tile) * (size_t)d;
  for (int c = tid; c < d; c += nt) perm[poff + c] = sm.perm[c];
  if (!wts) return;
  if (norm) {
    for (int g0 = tid * GS; g0 < d; g0 += nt * GS) {
      const int g1 = min(g0 + GS, d);
      float sum = 0.0f;
      for (int i = g0; i < g1; i++) sum = __fadd_rn(sum, sm.a[sm.perm[i]]);
      if (!(sum > 0.0f && sum <= 3.402823466e+38f)) /* 0, NaN or Inf: 1s (SPEC 1 step 6) */
        for (int i = g0; i < g1; i++) sm.a[sm.perm[i]] = 1.0f;
    }
    __syncthreads();
  }
  for (int c = tid; c < d; c += nt) wts[poff + c] = sm.a[c];
  if constexpr (GS > 1) {
    if (!qs) return;
    /* thread: OV columns (column vector cv) of every nb-th block of RB rows */
    constexpr int OV = dac_hash_tb<TB>::ov(GS), RB = dac_hash_tb<TB>::RB;
    const int ncv = (qs_ld + OV - 1) / OV;
    const int cs = min(ncv, nt), nb = nt / cs, tb = tid / cs;
    const size_t qsoff = (bh * (size_t)seq_q + (size_t)r0) * (size_t)qs_ld;
    for (int k = 0; k < (resident ? 1 : nch); k++) {
      const int row0 = resident ? 0 : k * CK;
      const int n = resident ? rows : min(CK, rows - row0);
      if (!resident) {
        __syncthreads();
        dac_hash_copy_q(g, qbuf, row0, row0 + n, row0);
        dac_cp_commit();
        dac_cp_wait<0>();
        __syncthreads();
      }
      if (tb >= nb) continue;
      for (int cv = tid % cs; cv < ncv; cv += cs) {
        dac_hash_fuse_cols<GS, OV> f;
        const int g0 = cv * OV;
        f.vmask = 0;
        f.inv = 0;
#pragma unroll
        for (int j = 0; j < OV; j++) {
          float den = 0.0f;
#pragma unroll
          for (int i = 0; i < GS; i++) {
            const int p = (g0 + j) * GS + i;
            const bool valid = g0 + j < ng && p < d;
            const int c = valid ? sm.perm[p] : 0;
            f.off[j][i] = (c * es / 16 * rpad) * 16 + c * es % 16;
            if (valid) {
              den += sm.a[c];
              f.vmask |= 1u << (j * GS + i);
            }
          }
          /* den = 2^e, e in [-126, 126]: 1 / den is exact */
          const uint32_t db = __float_as_uint(den);
          const bool exact = (db & 0x807fffffu) == 0 && db >= 0x00800000u && db <= 0x7e800000u;
          f.dv[j] = exact ? 1.0f / den : den;
          f.inv |= (uint32_t)exact << j;
        }
        f.nvalid = min(OV, ng - g0);
        f.fast = f.inv == (1u << OV) - 1 && f.nvalid == OV && (g0 + OV) * GS <= d;
        const size_t qi = qsoff + (size_t)row0 * qs_ld + g0;
        dac_hash_fuse_dt<GS, OV, RB>(dt, qbuf, n, tb, nb, f, qs, qs_dt, qi, qs_ld, qs_vec,
                                     qs_ld - g0);
      }
    }
  }
}

template <int NB, int GS, int TB>
cudaError_t
dac_hash_launch(dim3 grid, int threads, size_t smem, cudaStream_t s, const void *q,
                const dac_qlayout &ql, da_dtype dt, int heads, int seq_q, int d, const float *proj, int hash_bits, int hash_block,
                int norm, int n_tiles, int resident, int rpad, int pb, int rvec, int *perm,
                float *wts, void *qs, da_dtype qs_dt, int qs_ld, int ng, int qs_vec) {
  cudaError_t e;
  if (smem > 48 * 1024 && (e = cudaFuncSetAttribute(dac_hash_kernel<NB, GS, TB>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    (int)smem)) != cudaSuccess)
    return e;
  /* blocks per SM are bounded by shared memory: let them have all of it */
  if ((e = cudaFuncSetAttribute(dac_hash_kernel<NB, GS, TB>,
                                cudaFuncAttributePreferredSharedMemoryCarveout,
                                cudaSharedmemCarveoutMaxShared)) != cudaSuccess)
    return e;
  dac_hash_kernel<NB, GS, TB><<<grid, threads, smem, s>>>(
      q, ql, dt, heads, seq_q, d, proj, hash_bits, hash_block, norm, n_tiles, resident, rpad, pb, rvec,
      perm, wts, qs, qs_dt, qs_ld, ng, qs_vec);
  return cudaGetLastError();
}

#define DAC_HASH_INST1(NB, GS, TB)                                                                 \
  template cudaError_t dac_hash_launch<NB, GS, TB>(                                                \
      dim3, int, size_t, cudaStream_t, const void *, const dac_qlayout &, da_dtype, int, int, int, const float *, int,  \
      int, int, int, int, int, int, int, int *, float *, void *, da_dtype, int, int, int);
/* the launches (and so the kernels) of one G: each NB at each of its TBs */
#define DAC_HASH_INSTANTIATE(GS)                                                                   \
  DAC_HASH_TBS_8(DAC_HASH_INST1, GS) DAC_HASH_TBS_16(DAC_HASH_INST1, GS)                           \
  DAC_HASH_TBS_32(DAC_HASH_INST1, GS)

#endif
