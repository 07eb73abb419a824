#pragma once
// alloy's LibTorch adapter in one include: modules as parameter stores, snapshots and assignment
// on any device, PAM in a torch optimizer loop, and the alignment regularizers as torch functions.

#include "alloy/alloy.hpp"
#include "alloy/torch/alignment_target.hpp"
#include "alloy/torch/merge.hpp"
#include "alloy/torch/pam.hpp"
#include "alloy/torch/regularizers.hpp"
#include "alloy/torch/svd.hpp"
#include "alloy/torch/tensor_store.hpp"
#include "alloy/torch/transfer.hpp"
