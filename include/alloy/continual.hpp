#pragma once
// Continual learning by merging: the continual merger (one global model, a task copy per task,
// merged back by a running mean, a fixed weight or any merge policy), used with alloy/align.hpp;
// OPCM and DOP, merging each task by projections in singular subspaces (opcm.hpp, dop.hpp);
// MagMax over every task vector seen (magmax_sequence.hpp); LoRA adapters merged by their products
// and taken back to their rank (lora_product.hpp).

#include "alloy/continual/continual_merger.hpp"
#include "alloy/continual/dop.hpp"
#include "alloy/continual/lora_product.hpp"
#include "alloy/continual/magmax_sequence.hpp"
#include "alloy/continual/opcm.hpp"
