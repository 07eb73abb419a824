#pragma once
// Version and portability macros shared by every alloy header.

#define ALLOY_VERSION_MAJOR 0
#define ALLOY_VERSION_MINOR 1
#define ALLOY_VERSION_PATCH 0

// ALLOY_HD marks functions that run on the host and, under nvcc, on the device too, so that one
// definition of a policy's per-element math serves every backend (as EIGEN_DEVICE_FUNC does).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define ALLOY_HD __host__ __device__
#else
#define ALLOY_HD
#endif

#if defined(__GNUC__) || defined(__clang__)
#define ALLOY_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALLOY_ALWAYS_INLINE inline
#endif

// A pointer through which alone its array is accessed in a function: lets the compiler vectorise
// loops that write one array while reading many (it otherwise gives up checking every overlap).
#if defined(__GNUC__) || defined(__clang__) || defined(_MSC_VER)
#define ALLOY_RESTRICT __restrict
#else
#define ALLOY_RESTRICT
#endif
