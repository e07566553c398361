// MONTA_HD: a function written once for the host and the device (inline on the host, __host__ __device__ under nvcc),
// for the arithmetic both backends must compute with the same bits (engine/rng_math.h, engine/fp8_math.h).
#pragma once

#ifdef __CUDACC__
#define MONTA_HD __host__ __device__ inline
#else
#define MONTA_HD inline
#endif
