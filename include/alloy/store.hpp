#pragma once
// Stores: the parameter_store concept and the stores alloy provides (in memory, borrowed views,
// subsets, a base with a PEFT LoRA adapter folded in). Files: alloy/safetensors.hpp.

#include "alloy/store/borrowed_store.hpp"
#include "alloy/store/lora_applied_store.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/name_index.hpp"
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"
#include "alloy/store/peft_lora_adapter.hpp"
#include "alloy/store/store_subset.hpp"
