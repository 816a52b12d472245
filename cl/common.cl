/* SPDX-License-Identifier: Apache-2.0 */
/* distrattn OpenCL kernels: element access shared by every program.
 * DTYPE: 0 f32, 1 f16 (stored as half bits), 2 bf16 (stored as bf16 bits).
 * Arithmetic is f32 everywhere; no fast-math options are ever passed. */
#if DTYPE == 0
typedef float elem_t;
#define LOAD_ELEM(p, i) ((p)[i])
#define STORE_ELEM(p, i, v) ((p)[i] = (v))
#elif DTYPE == 1
typedef ushort elem_t;
#define LOAD_ELEM(p, i) vload_half((i), (__global const half *)(p))
#define STORE_ELEM(p, i, v) vstore_half_rte((v), (i), (__global half *)(p))
#else
typedef ushort elem_t;
#define LOAD_ELEM(p, i) as_float((uint)(p)[i] << 16)
#define STORE_ELEM(p, i, v) ((p)[i] = da_f32_to_bf16(v))
#endif

inline ushort da_f32_to_bf16(float f) {
  uint x = as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (ushort)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (ushort)(x >> 16);
}
