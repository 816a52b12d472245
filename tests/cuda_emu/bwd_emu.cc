/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The CUDA backward pass's kernels (cuda/cuda_bwd_kern.cuh,
 * cuda/cuda_bwd_mma.cuh, cuda/cuda_bwd_split.cuh), their own source run on the host through
 * tests/cuda_emu/emu.h, against the cpu backend's backward on the same
 * inputs (its forward gives O and the LSE): a check of the kernels' logic
 * (fragment layouts, masks, row ranges, GQA, strides, G > 1 through the
 * expanded Q, the dQ fold, the projection strategy through Qx = Q M_h and
 * dQ = s E M_h^T, the cp.async double buffering as far as
 * emu.h's late landing shows it) on a machine without a GPU. The launch
 * sequence is cuda/cuda_backend.cu's dac_attention_bwd's. Not a check of
 * what depends on the hardware's timing (races between blocks, atomics,
 * memory ordering): that needs the GPU (tests/test_backward.c's 'cuda: ...'
 * cases, compute-sanitizer's racecheck).
 *
 *   tests/cuda_emu/run.sh BUILD_DIR      (compiles this with g++ and runs it)
 */
#include "emu.h"

#include "cuda_bwd_kern.cuh"
#include "cuda_bwd_mma.cuh"
#include "cuda_bwd_split.cuh"

#include "distrattn.h"

#define CHECK(call)                                                                                \
  do {                                                                                             \
    da_status s_ = (call);                                                                         \
    if (s_ != DA_SUCCESS) {                                                                        \
      fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call, da_status_string(s_),    \
              da_context_last_error(ctx));                                                         \
      exit(2);                                                                                     \
    }                                                                                              \
  } while (0)

struct kcase {
  int B, H, KH, Sq, Sk, d, causal;
  da_dtype t;
  int G;
  da_fusion f;
  int hb, wl, wr, bshd;
  int kern; /* 0 SIMT, 1 tensor cores with 64 keys a block, 2 with 128 */
  int rank; /* > 0: the projection strategy (SPEC 1c) of this rank, G 1 */
  int split; /* tensor cores: the split arrangement (DISTRATTN_CUDA_BWD_DQ=split) */
};

static uint64_t rng = 88172645463325252ull;
static double urand() {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (double)(rng >> 11) / 9007199254740992.0;
}
static double nrand() { return sqrt(-2 * log(urand() + 1e-300)) * cos(6.283185307179586 * urand()); }

static void bshd_st(long long st[3], int nh, int S, int d) {
  st[0] = (long long)S * nh * d, st[1] = d, st[2] = (long long)nh * d;
}

static double rel_err(const void *a, const void *b, da_dtype t, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double x = da_load_elem(a, t, i), y = da_load_elem(b, t, i);
    if (!std::isfinite(x)) return INFINITY;
    num += (x - y) * (x - y), den += y * y;
  }
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

template <typename T, int D, int W> static void run_mma_w(const dac_bwd_args &a) {
  typedef dac_bwd_mma_cfg<D, W> cfg;
  if (cfg::template smem<T>() > sizeof smraw) abort();
  emu::launch(dim3((a.seq_k + cfg::BC - 1) / cfg::BC, a.kv_heads, a.batch), cfg::NT,
              [&] { dac_bwd_mma_kernel<T, D, W>(a); });
}
template <typename T> static void run_mma(const dac_bwd_args &a) {
  if (a.d == 64)
    a.bc == 128 ? run_mma_w<T, 64, 8>(a) : run_mma_w<T, 64, 4>(a);
  else
    a.bc == 128 ? run_mma_w<T, 128, 8>(a) : run_mma_w<T, 128, 4>(a);
}

/* the split arrangement as launch_bwd_split launches it */
template <typename T, int D, int ROWS> static void run_dq_r(const dac_bwd_args &a) {
  typedef dac_bwd_dq_sel<D, ROWS> qsel;
  typedef dac_bwd_dqk_cfg<D, qsel::WARPS, qsel::BC> qc;
  if (qc::template smem<T>() > sizeof smraw) abort();
  emu::launch(dim3((a.seq_q + qc::BR - 1) / qc::BR, a.heads, a.batch), qc::NT,
              [&] { dac_bwd_dq_mma_kernel<T, D, qsel::WARPS, qsel::BC, qsel::MINB>(a); });
}
template <typename T, int D, int W> static void run_split_w(const dac_bwd_args &a) {
  typedef dac_bwd_split_sel<D, W> sel;
  typedef dac_bwd_dkv_cfg<D, W, sel::DKV_BR> kc;
  if (kc::template smem<T>() > sizeof smraw) abort();
  emu::launch(dim3((a.seq_k + kc::BC - 1) / kc::BC, a.kv_heads, a.batch), kc::NT,
              [&] { dac_bwd_dkv_kernel<T, D, W, sel::DKV_BR, sel::DKV_MINB>(a); });
  a.dq_rows == 64 ? run_dq_r<T, D, 64>(a) : run_dq_r<T, D, 128>(a);
}
template <typename T> static void run_split(const dac_bwd_args &a) {
  if (a.d == 64)
    a.bc == 128 ? run_split_w<T, 64, 8>(a) : run_split_w<T, 64, 4>(a);
  else
    a.bc == 128 ? run_split_w<T, 128, 8>(a) : run_split_w<T, 128, 4>(a);
}

/* One case: returns the worst relative error of dQ, dK, dV against the cpu
 * backend's. */
static double run(const kcase &k, double *errs) {
  da_context *ctx = NULL;
  CHECK(da_context_create(&ctx, DA_BACKEND_CPU, 0));
  da_attn_desc d;
  da_attn_desc_init(&d);
  d.batch = k.B, d.heads = k.H, d.kv_heads = k.KH, d.seq_q = k.Sq, d.seq_k = k.Sk;
  d.head_dim = k.d, d.dtype = k.t, d.causal = k.causal, d.group_size = k.G, d.fusion = k.f;
  d.seed = 7;
  if (k.hb) d.hash_block = k.hb;
  da_attn_ext x;
  da_attn_ext_init(&x);
  x.lse = 1;
  x.window_left = k.wl, x.window_right = k.wr;
  if (k.bshd) {
    bshd_st(x.q_stride, k.H, k.Sq, k.d);
    bshd_st(x.o_stride, k.H, k.Sq, k.d);
    bshd_st(x.k_stride, k.KH, k.Sk, k.d);
    bshd_st(x.v_stride, k.KH, k.Sk, k.d);
  }
  std::vector<float> proj;
  if (k.rank) { /* random A_h, B_h: N(0, 1.5^2 / d) */
    proj.resize((size_t)k.H * 2 * k.d * k.rank);
    for (float &e : proj) e = (float)(1.5 * nrand() / sqrt((double)k.d));
    x.strategy = DA_STRATEGY_PROJECTION, x.rank = k.rank, x.proj = proj.data();
  }
  da_plan *p = NULL;
  CHECK(da_plan_create_ext(ctx, &d, &x, &p));
  CHECK(da_plan_get_desc(p, &d));
  CHECK(da_plan_get_ext(p, &x));
  const size_t es = k.t == DA_F32 ? 4 : 2;
  const size_t nq = (size_t)k.B * k.H * k.Sq * k.d, nk = (size_t)k.B * k.KH * k.Sk * k.d;
  const size_t nl = (size_t)k.B * k.H * k.Sq;
  std::vector<char> q(nq * es), kk(nk * es), v(nk * es), o(nq * es), dout(nq * es);
  std::vector<char> dq(nq * es), dk(nk * es), dv(nk * es), eq(nq * es), ek(nk * es), ev(nk * es);
  std::vector<float> lse(nl);
  for (size_t i = 0; i < nq; i++) da_store_elem(q.data(), k.t, i, (float)nrand());
  for (size_t i = 0; i < nq; i++) da_store_elem(dout.data(), k.t, i, (float)nrand());
  for (size_t i = 0; i < nk; i++) da_store_elem(kk.data(), k.t, i, (float)nrand());
  for (size_t i = 0; i < nk; i++) da_store_elem(v.data(), k.t, i, (float)nrand());
  memset(eq.data(), 0x7f, eq.size()), memset(ek.data(), 0x7f, ek.size()), memset(ev.data(), 0x7f, ev.size());
  auto wrap = [&](void *ptr, size_t n) {
    da_buffer *b = NULL;
    CHECK(da_buffer_wrap(ctx, ptr, n, &b));
    return b;
  };
  da_buffer *bq = wrap(q.data(), q.size()), *bk = wrap(kk.data(), kk.size());
  da_buffer *bv = wrap(v.data(), v.size()), *bo = wrap(o.data(), o.size());
  da_buffer *bl = wrap(lse.data(), nl * 4), *bdo = wrap(dout.data(), dout.size());
  da_buffer *bdq = wrap(dq.data(), dq.size()), *bdk = wrap(dk.data(), dk.size());
  da_buffer *bdv = wrap(dv.data(), dv.size());
  da_attn_args fa;
  da_attn_args_init(&fa);
  fa.q = bq, fa.k = bk, fa.v = bv, fa.o = bo, fa.lse = bl;
  CHECK(da_attention_ext(p, &fa));
  da_bwd_args ba;
  da_bwd_args_init(&ba);
  ba.dout = bdo, ba.q = bq, ba.k = bk, ba.v = bv, ba.o = bo, ba.lse = bl;
  ba.dq = bdq, ba.dk = bdk, ba.dv = bdv;
  CHECK(da_attention_backward(p, &ba));

  /* the emulated CUDA pass, as dac_attention_bwd launches it */
  dac_bwd_args a;
  memset(&a, 0, sizeof a);
  a.q = q.data(), a.k = kk.data(), a.v = v.data(), a.o = o.data(), a.dout = dout.data();
  a.lse = lse.data();
  a.dq = eq.data(), a.dk = ek.data(), a.dv = ev.data();
  memcpy(a.qst, x.q_stride, sizeof a.qst);
  memcpy(a.kst, x.k_stride, sizeof a.kst);
  memcpy(a.vst, x.v_stride, sizeof a.vst);
  memcpy(a.ost, x.o_stride, sizeof a.ost);
  a.batch = d.batch, a.heads = d.heads, a.kv_heads = d.kv_heads;
  a.seq_q = d.seq_q, a.seq_k = d.seq_k, a.d = d.head_dim;
  const int G = d.group_size;
  const int nt = (d.seq_q + d.hash_block - 1) / d.hash_block;
  a.G = G, a.hash_block = d.hash_block, a.n_tiles = nt;
  a.wl = x.window_left, a.wr = x.window_right;
  a.sc_log2 = da_log2_mul(d.scale);
  a.sc = (float)((double)a.sc_log2 / DA_LOG2E);
  a.dt = d.dtype;
  a.bc = k.kern == 2 ? 128 : 64;
  a.dq_rows = k.kern == 2 ? 128 : 64; /* split: the dQ kernel's two shapes, one with each */
  std::vector<float> dacc(nq), dsum(nl);
  std::vector<int> perm;
  std::vector<float> wts;
  std::vector<char> qx;
  std::vector<float> pm;
  a.dacc = dacc.data();
  if (k.split) /* nothing zeroes E first: the dQ kernel writes every row */
    memset(dacc.data(), 0x7f, dacc.size() * sizeof(float));
  a.dsum = dsum.data();
  if (k.rank) {
    /* M_h = A_h B_h^T (the plan's, as dac_proj_bwd_plan makes it), then
     * Qx = Q M_h (the dtype on the tensor-core path, else f32) */
    pm.resize((size_t)d.heads * d.head_dim * d.head_dim);
    da_proj_products(x.proj, d.heads, d.head_dim, k.rank, pm.data(), NULL);
    a.pm = pm.data();
    const da_dtype qx_dt = k.kern ? d.dtype : DA_F32;
    qx.resize(nq * (qx_dt == DA_F32 ? 4 : 2));
    const unsigned tiles = (unsigned)(((k.Sq + BWD_PM - 1) / BWD_PM) * ((k.d + BWD_PM - 1) / BWD_PM));
    emu::launch(dim3(tiles, d.heads, d.batch), BWD_PT,
                [&] { dac_bwd_proj_kernel(a, 0, qx.data(), qx_dt); });
    a.qx = qx.data();
    a.qx_dt = qx_dt;
  }
  if (G > 1) {
    /* the groupings (the cpu backend's, equal to the forward hash kernel's)
     * and the weights from their definition (SPEC 1 step 6) */
    perm.resize((size_t)d.batch * d.heads * nt * d.head_dim);
    wts.resize(perm.size());
    std::vector<char> qd(nq * es);
    for (int b = 0; b < k.B; b++)
      for (int h = 0; h < k.H; h++)
        for (int i = 0; i < k.Sq; i++)
          memcpy(&qd[((((size_t)b * k.H + h) * k.Sq + i) * k.d) * es],
                 &q[(size_t)(b * x.q_stride[0] + h * x.q_stride[1] + i * x.q_stride[2]) * es],
                 k.d * es);
    da_attn_desc dd = d;
    da_plan *pd = NULL;
    CHECK(da_plan_create(ctx, &dd, &pd));
    CHECK(da_plan_groups_host(pd, qd.data(), perm.data()));
    da_plan_destroy(pd);
    for (size_t bh = 0; bh < (size_t)k.B * k.H; bh++)
      for (int t = 0; t < nt; t++) {
        const size_t po = (bh * nt + t) * k.d;
        const int r0 = t * d.hash_block, r1 = std::min(r0 + d.hash_block, k.Sq);
        for (int c = 0; c < k.d; c++) {
          double ss = 0;
          for (int i = r0; i < r1; i++) {
            const double e = da_load_elem(qd.data(), k.t, (bh * k.Sq + i) * k.d + c);
            ss += e * e;
          }
          wts[po + c] = k.f == DA_FUSE_NORM ? (float)sqrt(ss) : 1.0f;
        }
        for (int g0 = 0; g0 < k.d; g0 += G) {
          float s = 0;
          for (int i = g0; i < std::min(g0 + G, k.d); i++) s += wts[po + perm[po + i]];
          if (!(s > 0 && s <= 3.402823466e+38f))
            for (int i = g0; i < std::min(g0 + G, k.d); i++) wts[po + perm[po + i]] = 1.0f;
        }
      }
    a.perm = perm.data();
    a.wts = wts.data();
    const da_dtype qx_dt = k.kern ? d.dtype : DA_F32;
    qx.resize(nq * (qx_dt == DA_F32 ? 4 : 2));
    emu::launch(dim3(nt, d.heads, d.batch), BWD_GT, [&] { dac_bwd_qx_kernel(a, qx.data(), qx_dt); });
    a.qx = qx.data();
    a.qx_dt = qx_dt;
  }
  emu::launch(dim3((unsigned)((nl + 7) / 8), 1, 1), 256, [&] { dac_bwd_dsum_kernel(a); });
  if (k.kern && k.split) {
    if (k.t == DA_F16)
      run_split<__half>(a);
    else
      run_split<__nv_bfloat16>(a);
  } else if (k.kern) {
    if (k.t == DA_F16)
      run_mma<__half>(a);
    else
      run_mma<__nv_bfloat16>(a);
  } else {
    emu::launch(dim3((d.seq_k + BWD_SK - 1) / BWD_SK, d.kv_heads, d.batch), BWD_ST,
                [&] { dac_bwd_simt_kernel(a); });
  }
  if (k.rank) {
    const unsigned tiles = (unsigned)(((k.Sq + BWD_PM - 1) / BWD_PM) * ((k.d + BWD_PM - 1) / BWD_PM));
    emu::launch(dim3(tiles, d.heads, d.batch), BWD_PT,
                [&] { dac_bwd_proj_kernel(a, 1, NULL, DA_F32); });
  } else if (G > 1)
    emu::launch(dim3(nt, d.heads, d.batch), BWD_GT, [&] { dac_bwd_dq_grouped_kernel(a); });
  else if (!(k.kern && k.split)) /* split, G = 1: the dQ kernel wrote dQ */
    emu::launch(dim3((unsigned)((nq + 255) / 256), 1, 1), 256, [&] { dac_bwd_dq_kernel(a); });

  errs[0] = rel_err(eq.data(), dq.data(), k.t, nq);
  errs[1] = rel_err(ek.data(), dk.data(), k.t, nk);
  errs[2] = rel_err(ev.data(), dv.data(), k.t, nk);
  da_buffer *all[] = {bq, bk, bv, bo, bl, bdo, bdq, bdk, bdv};
  for (da_buffer *b : all) da_buffer_destroy(b);
  da_plan_destroy(p);
  da_context_destroy(ctx);
  return std::max(errs[0], std::max(errs[1], errs[2]));
}

int main() {
  const int NW = -1;
  static const kcase cs[] = {
      /* B H KH Sq Sk d causal t G f hb wl wr bshd kern (rank) */
      {1, 2, 1, 70, 100, 64, 0, DA_F16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 1},
      {1, 2, 2, 100, 70, 64, 1, DA_BF16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 1},
      {1, 4, 2, 77, 150, 128, 1, DA_F16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 1},
      {2, 6, 2, 40, 33, 128, 0, DA_BF16, 1, DA_FUSE_MEAN, 0, NW, NW, 1, 1},
      {1, 2, 1, 130, 90, 64, 0, DA_F16, 1, DA_FUSE_MEAN, 0, 20, 5, 0, 1},
      {1, 4, 2, 90, 80, 64, 1, DA_F16, 2, DA_FUSE_NORM, 32, NW, NW, 0, 1},
      {1, 2, 1, 70, 65, 128, 0, DA_BF16, 4, DA_FUSE_MEAN, 64, NW, NW, 1, 1},
      {1, 2, 1, 3, 2, 64, 0, DA_F16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 1},
      {1, 6, 2, 200, 260, 128, 1, DA_F16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 1},
      {1, 2, 1, 257, 129, 64, 0, DA_BF16, 1, DA_FUSE_MEAN, 0, 30, 0, 1, 1},
      {1, 2, 2, 80, 96, 64, 0, DA_F16, 8, DA_FUSE_NORM, 16, NW, NW, 0, 1},
      {1, 2, 1, 100, 120, 128, 0, DA_F16, 1, DA_FUSE_MEAN, 0, 0, NW, 0, 1},
      {1, 4, 2, 150, 70, 128, 1, DA_BF16, 2, DA_FUSE_NORM, 0, NW, NW, 0, 1},
      /* windows near INT_MAX: the masks' clamped thresholds (bwd_mask) */
      {1, 2, 1, 40, 50, 64, 0, DA_F16, 1, DA_FUSE_MEAN, 0, 2147483647, 2000000000, 0, 1},
      {1, 2, 1, 40, 50, 64, 1, DA_BF16, 1, DA_FUSE_MEAN, 0, 2147483600, NW, 0, 1},
      {1, 4, 2, 50, 70, 40, 1, DA_F32, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 0},
      {1, 6, 2, 45, 37, 64, 0, DA_F32, 1, DA_FUSE_MEAN, 0, 9, 3, 1, 0},
      {1, 4, 2, 60, 50, 59, 1, DA_F32, 2, DA_FUSE_NORM, 16, NW, NW, 0, 0},
      {1, 2, 1, 64, 40, 48, 0, DA_F32, 4, DA_FUSE_MEAN, 32, 7, NW, 1, 0},
      {1, 2, 2, 70, 90, 64, 1, DA_BF16, 2, DA_FUSE_MEAN, 32, NW, NW, 0, 0},
      {1, 2, 1, 1, 90, 96, 1, DA_F16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 0},
      {1, 2, 1, 20, 30, 256, 0, DA_F32, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 0},
      {1, 2, 1, 40, 50, 128, 1, DA_BF16, 4, DA_FUSE_NORM, 16, NW, NW, 1, 0},
      /* the projection strategy: tensor cores (f16/bf16, d 64 and 128) */
      {1, 4, 2, 70, 100, 64, 1, DA_F16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 1, 16},
      {1, 2, 1, 90, 65, 128, 0, DA_BF16, 1, DA_FUSE_MEAN, 0, NW, NW, 1, 1, 1},
      {1, 2, 2, 130, 80, 128, 1, DA_F16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 1, 128},
      {1, 4, 2, 60, 90, 64, 0, DA_BF16, 1, DA_FUSE_MEAN, 0, 20, 5, 0, 1, 64},
      /* ... and SIMT (f32, other head_dims) */
      {1, 4, 2, 50, 70, 40, 1, DA_F32, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 0, 1},
      {1, 6, 2, 70, 45, 59, 0, DA_F32, 1, DA_FUSE_MEAN, 0, 9, 3, 1, 0, 7},
      {1, 2, 1, 66, 40, 64, 1, DA_F32, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 0, 64},
      {1, 2, 1, 20, 30, 256, 0, DA_F32, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 0, 32},
      {1, 2, 2, 70, 90, 128, 1, DA_BF16, 1, DA_FUSE_MEAN, 0, NW, NW, 0, 0, 20},
  };
  int bad = 0;
  std::vector<kcase> all;
  /* the tensor-core cases with both block sizes, atomic and split */
  for (int split = 0; split < 2; split++)
    for (const kcase &k : cs) {
      if (split && !k.kern) continue;
      all.push_back(k);
      all.back().split = split;
      if (k.kern) {
        all.push_back(all.back());
        all.back().kern = 2;
      }
    }
  for (const kcase &k : all) {
    double e[3];
    const double worst = run(k, e);
    const double bound = k.t == DA_F32 ? 1e-5 : k.t == DA_F16 ? 4e-3 : 3e-2;
    char rk[16] = "";
    if (k.rank) snprintf(rk, sizeof rk, " rank %d", k.rank);
    printf("%s%s %s B%d H%d/%d %dx%d d%d causal %d G%d hb %d win %d/%d%s%s: dQ %.2e dK %.2e dV %.2e%s\n",
           k.split ? "split " : "", k.kern == 2 ? "mma128" : k.kern ? "mma64 " : "simt  ", k.t == DA_F32 ? "f32 " : k.t == DA_F16 ? "f16 " : "bf16", k.B,
           k.H, k.KH, k.Sq, k.Sk, k.d, k.causal, k.G, k.hb, k.wl, k.wr, k.bshd ? " bshd" : "", rk,
           e[0], e[1], e[2], worst <= bound ? "" : "  FAIL");
    fflush(stdout);
    bad += !(worst <= bound);
  }
  printf("%s\n", bad ? "FAILED" : "all within bounds");
  return bad ? 1 : 0;
}
