#pragma once
// Merging: the policies (linear, task arithmetic, TIES, DARE, breadcrumbs, DELLA, MagMax, SLERP,
// Model Stock, nearswap, passthrough), the typed registry of methods, recipes, merge plans (whole models,
// mergekit's slices and modules) and the one executor.

#include "alloy/merge/execute_plan.hpp"
#include "alloy/merge/linear_merge.hpp"
#include "alloy/merge/magmax_merge.hpp"
#include "alloy/merge/merge_inputs.hpp"
#include "alloy/merge/merge_plan.hpp"
#include "alloy/merge/merge_recipe.hpp"
#include "alloy/merge/model_stock_merge.hpp"
#include "alloy/merge/module_plan.hpp"
#include "alloy/merge/nearswap_merge.hpp"
#include "alloy/merge/parameters.hpp"
#include "alloy/merge/registry.hpp"
#include "alloy/merge/slerp_merge.hpp"
#include "alloy/merge/slice_plan.hpp"
#include "alloy/merge/task_vector_merge.hpp"
