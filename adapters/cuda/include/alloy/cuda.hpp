#pragma once
// alloy's CUDA backend (link alloy::cuda): the merge policies, PAM and the regularizers on the
// GPU, callable from any compiler. Kernels for code compiled by nvcc are in alloy/cuda/primitives.cuh.

#include "alloy/cuda/align.hpp"
#include "alloy/cuda/backend.hpp"
#include "alloy/cuda/merge.hpp"
