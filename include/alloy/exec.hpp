#pragma once
// Execution backends and the primitives every algorithm is written against: elementwise,
// reduce_sums, rank_band_mask, rank_sampling_mask, select_where, count_set, add_scaled_product,
// stage_arguments. The CPU backend is here, with its run-time choice of vector instructions
// (cpu_features.hpp); the CUDA backend is in adapters/cuda (alloy/cuda.hpp).

#include "alloy/exec/block_convert.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/cpu_features.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/matmul.hpp"
#include "alloy/exec/random.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/exec/select.hpp"
