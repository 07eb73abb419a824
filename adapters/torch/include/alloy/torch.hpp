#pragma once
// alloy's LibTorch adapter in one include: modules as parameter stores, snapshots and assignment
// on any device, PAM in a torch optimizer loop, the alignment regularizers as torch functions, and
// data-parallel training over c10d (several ranks with alloy::torch_distributed).

#include "alloy/alloy.hpp"
#include "alloy/torch/alignment_target.hpp"
#include "alloy/torch/distributed.hpp"
#include "alloy/torch/merge.hpp"
#include "alloy/torch/pam.hpp"
#include "alloy/torch/regularizers.hpp"
#include "alloy/torch/svd.hpp"
#include "alloy/torch/tensor_store.hpp"
#include "alloy/torch/transfer.hpp"
