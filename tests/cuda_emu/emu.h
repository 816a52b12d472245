/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A host emulation of the little of CUDA that the backward pass's kernels
 * use (cuda/cuda_bwd_kern.cuh, cuda/cuda_bwd_mma.cuh), so that their own
 * source runs, compiled by the host C++ compiler, on a machine without a
 * GPU: each thread of a block is a fiber (ucontext), __syncthreads and
 * __syncwarp are barriers between the fibers, and the warp-wide
 * instructions (ldmatrix, mma.sync m16n8k16, shuffles) are emulated from
 * their PTX definitions: every lane deposits its operands, a warp barrier,
 * every lane computes its own result from all 32 deposits, a warp barrier.
 * cp.async lands only at the cp.async.wait_group that needs it (so a read
 * of shared memory before its wait sees stale data here too), atomics are
 * plain adds (one fiber runs at a time), ex2.approx is exp2f.
 *
 * Include this before any cuda/ header: it includes the CUDA runtime and
 * fp16/bf16 headers, then redefines the CUDA keywords for the host and
 * stands in for cuda/cuda_dev.cuh and cuda/cuda_mma.cuh (their include
 * guards are defined here, so the real ones are skipped).
 */
#ifndef DA_CUDA_EMU_H
#define DA_CUDA_EMU_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <vector>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __align__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__
#define __CUDA_ARCH__ 900
#define DA_CUDA_DEV_CUH /* stand in for cuda/cuda_dev.cuh and cuda/cuda_mma.cuh */
#define DA_CUDA_MMA_CUH
using std::max;
using std::min;

#include "cuda_internal.h"

/* ---- the block's threads as fibers ---- */
namespace emu {
struct copy { /* a cp.async not yet landed */
  void *dst;
  unsigned char data[16];
  int bytes;
  int group; /* its commit group, or -1 while uncommitted */
};
struct fiber {
  ucontext_t uc;
  std::vector<char> stack;
  int wait_bar; /* -1: runnable */
  unsigned wait_gen;
  bool done;
  std::vector<copy> pending;
  int groups; /* commit groups made */
};
struct barrier {
  int size, count;
  unsigned gen;
};
struct warp_x { /* what the lanes of a warp deposit for a collective */
  const void *addr[32];
  uint32_t a[32][4], b[32][2];
  float f[32];
};
inline std::vector<fiber> &fibers() { static std::vector<fiber> v; return v; }
inline std::vector<barrier> &bars() { static std::vector<barrier> v; return v; }
inline warp_x *wx() { static warp_x w[32]; return w; }
inline ucontext_t &sched() { static ucontext_t u; return u; }
inline int &cur() { static int c; return c; }
inline std::function<void()> &entry() { static std::function<void()> f; return f; }
}  // namespace emu

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {
inline void arrive(int id) {
  barrier &b = bars()[id];
  const unsigned g = b.gen;
  if (++b.count == b.size) {
    b.count = 0;
    b.gen++;
    return;
  }
  fiber &f = fibers()[cur()];
  f.wait_bar = id;
  f.wait_gen = g;
  swapcontext(&f.uc, &sched());
}
/* cp.async lands as late as the PTX rules allow: at the wait_group that
 * needs it (or when the thread ends), so that a read of shared memory
 * before its wait, or a slot refilled while still read, gives wrong
 * numbers here rather than only on a GPU */
inline void land(fiber &f, int upto) { /* every copy of a group below upto */
  size_t k = 0;
  for (size_t i = 0; i < f.pending.size(); i++) {
    copy &c = f.pending[i];
    if (c.group >= 0 && c.group < upto)
      memcpy(c.dst, c.data, c.bytes);
    else
      f.pending[k++] = c;
  }
  f.pending.resize(k);
}
inline void trampoline() {
  entry()();
  {
    fiber &f = fibers()[cur()];
    for (copy &c : f.pending) c.group = c.group < 0 ? f.groups : c.group;
    land(f, f.groups + 1);
  }
  fibers()[cur()].done = true;
  swapcontext(&fibers()[cur()].uc, &sched());
}
/* Runs fn as every thread of every block of grid; nt threads a block. */
inline void launch(dim3 grid, int nt, std::function<void()> fn) {
  if (nt % 32 || nt > 1024) {
    fprintf(stderr, "emu: %d threads a block\n", nt);
    abort();
  }
  gridDim = grid;
  blockDim = dim3(nt, 1, 1);
  entry() = fn;
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        blockIdx = make_uint3(x, y, z);
        if ((int)fibers().size() != nt) fibers().resize(nt);
        bars().assign(1 + nt / 32, barrier{32, 0, 0});
        bars()[0].size = nt;
        for (int t = 0; t < nt; t++) {
          fiber &f = fibers()[t];
          f.stack.resize(128 * 1024); /* kept from block to block */
          f.wait_bar = -1;
          f.done = false;
          f.pending.clear();
          f.groups = 0;
          getcontext(&f.uc);
          f.uc.uc_stack.ss_sp = f.stack.data();
          f.uc.uc_stack.ss_size = f.stack.size();
          f.uc.uc_link = NULL;
          makecontext(&f.uc, trampoline, 0);
        }
        for (;;) {
          bool progress = false, all_done = true;
          for (int t = 0; t < nt; t++) {
            fiber &f = fibers()[t];
            if (f.done) continue;
            all_done = false;
            if (f.wait_bar >= 0 && bars()[f.wait_bar].gen == f.wait_gen) continue;
            f.wait_bar = -1;
            cur() = t;
            threadIdx = make_uint3(t, 0, 0);
            swapcontext(&sched(), &f.uc);
            progress = true;
          }
          if (all_done) break;
          if (!progress) {
            fprintf(stderr, "emu: deadlock in block (%u, %u, %u)\n", x, y, z);
            abort();
          }
        }
      }
}
}  // namespace emu

inline void __syncthreads() { emu::arrive(0); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::arrive(1 + (int)threadIdx.x / 32); }
inline float __shfl_xor_sync(unsigned, float v, int m) {
  emu::warp_x &w = emu::wx()[threadIdx.x / 32];
  const int L = threadIdx.x % 32;
  w.f[L] = v;
  __syncwarp();
  const float r = w.f[L ^ m];
  __syncwarp();
  return r;
}
inline float atomicAdd(float *p, float v) {
  const float o = *p;
  *p = o + v;
  return o;
}
inline float2 atomicAdd(float2 *p, float2 v) {
  const float2 o = *p;
  p->x = o.x + v.x;
  p->y = o.y + v.y;
  return o;
}

/* ---- cuda/cuda_dev.cuh's helpers ---- */
template <typename T> struct dac_cvt;
template <> struct dac_cvt<__half> {
  static uint32_t pack(float lo, float hi) {
    return (uint32_t)da_float_to_half(lo) | (uint32_t)da_float_to_half(hi) << 16;
  }
  static float2 unpack(uint32_t x) {
    return make_float2(da_half_to_float((uint16_t)x), da_half_to_float((uint16_t)(x >> 16)));
  }
  static float f(uint16_t x) { return da_half_to_float(x); }
};
template <> struct dac_cvt<__nv_bfloat16> {
  static uint32_t pack(float lo, float hi) {
    return (uint32_t)da_float_to_bf16(lo) | (uint32_t)da_float_to_bf16(hi) << 16;
  }
  static float2 unpack(uint32_t x) {
    return make_float2(da_bf16_to_float((uint16_t)x), da_bf16_to_float((uint16_t)(x >> 16)));
  }
  static float f(uint16_t x) { return da_bf16_to_float(x); }
};
template <int BYTES> inline void dac_cp_async(void *dst, const void *src, bool fill) {
  emu::copy c;
  c.dst = dst;
  c.bytes = BYTES;
  c.group = -1;
  if (fill)
    memcpy(c.data, src, BYTES);
  else
    memset(c.data, 0, BYTES);
  emu::fibers()[emu::cur()].pending.push_back(c);
}
inline void dac_cp_commit() {
  emu::fiber &f = emu::fibers()[emu::cur()];
  for (emu::copy &c : f.pending)
    if (c.group < 0) c.group = f.groups;
  f.groups++;
}
/* all but the newest N committed groups have landed */
template <int N> inline void dac_cp_wait() {
  emu::fiber &f = emu::fibers()[emu::cur()];
  emu::land(f, f.groups - N);
}
inline float dac_ex2(float x) { return exp2f(x); }
static inline size_t dac_dtype_size(da_dtype t) { return t == DA_F32 ? 4 : 2; }

/* ---- cuda/cuda_mma.cuh's helpers ---- */
template <typename T> struct dac_mma_op : dac_cvt<T> {
  /* D = A B + C, m16n8k16, A row-major, B column-major (PTX ISA, "Matrix
   * fragments for mma.m16n8k16"): lane (g, t) = (lane / 4, lane % 4) holds
   * A[g + 8 (i & 1)][2t + 8 (i >> 1) + {0, 1}] in a[i], B[2t + 8 i + {0, 1}][g]
   * in b_i, C[g + 8 (e >> 1)][2t + (e & 1)] in c[e] */
  static void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    emu::warp_x &w = emu::wx()[threadIdx.x / 32];
    const int L = threadIdx.x % 32, g = L / 4, t = L % 4;
    for (int i = 0; i < 4; i++) w.a[L][i] = a[i];
    w.b[L][0] = b0;
    w.b[L][1] = b1;
    __syncwarp();
    auto A = [&](int r, int k) {
      const uint32_t x = w.a[(r % 8) * 4 + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)];
      return dac_cvt<T>::f((uint16_t)(k % 2 ? x >> 16 : x));
    };
    auto B = [&](int k, int n) {
      const uint32_t x = w.b[n * 4 + (k % 8) / 2][k >= 8];
      return dac_cvt<T>::f((uint16_t)(k % 2 ? x >> 16 : x));
    };
    float out[4];
    for (int e = 0; e < 4; e++) {
      const int r = g + 8 * (e >> 1), n = 2 * t + (e & 1);
      float s = c[e];
      for (int k = 0; k < 16; k++) s = fmaf(A(r, k), B(k, n), s);
      out[e] = s;
    }
    __syncwarp();
    for (int e = 0; e < 4; e++) c[e] = out[e];
  }
};
/* ldmatrix.x4: lanes 8m..8m+7 give the addresses of the 8 rows (8 b16 each)
 * of matrix m; lane L gets row L / 4, elements 2 (L % 4) and 2 (L % 4) + 1
 * of each (.trans: of each transposed) */
inline void ldsm_x4(uint32_t *r, const void *p) {
  emu::warp_x &w = emu::wx()[threadIdx.x / 32];
  const int L = threadIdx.x % 32;
  w.addr[L] = p;
  __syncwarp();
  for (int m = 0; m < 4; m++) {
    const uint16_t *row = (const uint16_t *)w.addr[8 * m + L / 4];
    r[m] = (uint32_t)row[2 * (L % 4)] | (uint32_t)row[2 * (L % 4) + 1] << 16;
  }
  __syncwarp();
}
inline void ldsm_x4_t(uint32_t *r, const void *p) {
  emu::warp_x &w = emu::wx()[threadIdx.x / 32];
  const int L = threadIdx.x % 32;
  w.addr[L] = p;
  __syncwarp();
  for (int m = 0; m < 4; m++) {
    const uint16_t lo = ((const uint16_t *)w.addr[8 * m + 2 * (L % 4)])[L / 4];
    const uint16_t hi = ((const uint16_t *)w.addr[8 * m + 2 * (L % 4) + 1])[L / 4];
    r[m] = (uint32_t)lo | (uint32_t)hi << 16;
  }
  __syncwarp();
}
/* verbatim from cuda/cuda_mma.cuh */
template <typename T, int ROWS, int W, int LD, int NT>
inline void load_tile(T *dst, const T *src, int row0, int nrows) {
  constexpr int CPR = W / 8;
  for (int i = threadIdx.x; i < ROWS * CPR; i += NT) {
    const int r = i / CPR, c = (i % CPR) * 8;
    const bool ok = row0 + r < nrows;
    const T *g = ok ? src + (size_t)(row0 + r) * W + c : src;
    dac_cp_async<16>(dst + r * LD + c, g, ok);
  }
}
template <typename T, int ROWS, int W, int LD, int NT>
inline void load_tile_s(T *dst, const T *src, int row0, int nrows, long long rs) {
  constexpr int CPR = W / 8;
  for (int i = threadIdx.x; i < ROWS * CPR; i += NT) {
    const int r = i / CPR, c = (i % CPR) * 8;
    const bool ok = row0 + r < nrows;
    const T *g = ok ? src + (long long)(row0 + r) * rs + c : src;
    dac_cp_async<16>(dst + r * LD + c, g, ok);
  }
}

/* the kernels' dynamic shared memory */
alignas(16) inline unsigned char smraw[256 * 1024];
alignas(16) inline float sm[64 * 1024];

#endif /* DA_CUDA_EMU_H */
