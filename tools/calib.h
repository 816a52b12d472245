/* SPDX-License-Identifier: Apache-2.0 */
/*
 * distrattn command-line program: calibration of the projection strategy
 * (SPEC.md 1c) from captured activations, and the DATTNPRJ writer
 * (tools/PROJ_FORMAT.md; the library's da_projections_load reads it).
 * Used by `distrattn calibrate`, tests/test_calib and tests/test_realdata.
 *
 * Per (layer, query head h, kv head g = h / (heads / kv_heads)), over the
 * calibration rows pooled across the capture's entries:
 *   Sq = sum q q^T over h's query rows (nq of them), Sk = sum k k^T over
 *   g's key rows (nk), Cq = Sq / nq, Ck = Sk / nk (uncentred second moments).
 * method pca:     A = B = U, the top-r eigenvectors of Cq / tr Cq + Ck / tr Ck
 *                 (Q's and K's directions weighted alike).
 * method optimal: the rank-r W = A B^T minimising the logits' squared error
 *                 over all pooled (query, key) pairs,
 *                 sum_{q,k} (q^T W k - q^T k)^2 = nq nk tr((W-I)^T Cq (W-I) Ck)
 *                 = nq nk ||Cq^(1/2) (W - I) Ck^(1/2)||_F^2:
 *                 with T = Cq^(1/2) Ck^(1/2) = U S V^T (SVD), the best rank-r
 *                 X = Cq^(1/2) W Ck^(1/2) is T_r = U_r S_r V_r^T (Eckart-Young),
 *                 so A = Cq^(+1/2) U_r S_r^(1/2), B = Ck^(+1/2) V_r S_r^(1/2)
 *                 (+: pseudo-inverse; eigenvalues below 1e-9 of the largest
 *                 count as 0). Its objective is never above pca's (whose
 *                 W = U U^T is one rank-r candidate).
 * Arithmetic in double: cyclic Jacobi for the symmetric eigenproblems,
 * one-sided (Hestenes) Jacobi for the SVD.
 */
#ifndef DA_TOOL_CALIB_H
#define DA_TOOL_CALIB_H

#include <stddef.h>

#include "capture_io.h"

typedef enum { CALIB_PCA = 0, CALIB_OPTIMAL = 1, CALIB_OTHER = 2 } calib_method;

#define PROJ_MAGIC "DATTNPRJ"
#define PROJ_VERSION 1u
#define PROJ_HEADER_BYTES 96u
#define PROJ_MODEL_BYTES 64u

/* Eigen-decomposition of the symmetric n x n matrix a (row-major, destroyed):
 * w[n] descending, v[n][n] with column i the eigenvector of w[i]. */
void calib_eig_sym(int n, double *a, double *w, double *v);

/* SVD of the n x n matrix t (row-major, destroyed): t = U diag(s) V^T,
 * s descending; u, v [n][n], column i the i-th singular vectors. */
void calib_svd(int n, double *t, double *u, double *s, double *v);

/* Projections of one head: A, B [d][r] row-major (f32), from the sums Sq
 * (nq rows) and Sk (nk rows), [d][d] row-major. Returns 0, -1 when out of
 * memory or no rows. */
int calib_head(int d, int r, calib_method m, const double *Sq, double nq, const double *Sk,
               double nk, float *A, float *B);

/* The relative logit error over all pairs, sqrt(tr(E^T Cq E Ck) /
 * tr(Cq Ck)) with E = A B^T - I (scale-free: Sq, Sk may be sums). */
double calib_objective(int d, int r, const double *Sq, const double *Sk, const float *A,
                       const float *B);

/* Sq [d][d] of query head h and Sk of its kv head, summed over the first
 * n_sent entries of layer l of a capture (rows counts in *nq, *nk). */
void calib_moments(const capture *c, unsigned n_sent, unsigned l, unsigned h, double *Sq,
                   double *nq, double *Sk, double *nk);

/* Writes a DATTNPRJ file: data [layers][heads][2][d][r] f32. model: up to
 * 64 printable ASCII characters (longer is cut, others become '?').
 * Returns 0, or -1 with why. */
int proj_write(const char *path, unsigned layers, unsigned heads, unsigned d, unsigned r,
               calib_method method, const char *model, const float *data, char *why,
               size_t why_len);

#endif /* DA_TOOL_CALIB_H */
