// alloy::cpu_merge: every merge method's CPU kernels (each dispatch level, each dtype) compiled
// once, here, for the programs that link the target; they see ALLOY_EXTERN_CPU_MERGE and so
// instantiate none of them themselves (alloy/merge/registry.hpp).

#include "alloy/merge/registry.hpp"

namespace alloy {

template void merge_with<cpu_backend>(const merge_policy&, const cpu_backend&, const merge_inputs&, tensor_view);

}  // namespace alloy
