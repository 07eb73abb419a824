#pragma once
// alloy: model merging and continual learning by aligned merging. The one header to include; or
// include one module: core, exec, store, safetensors, merge, align, continual.

#include "alloy/core.hpp"
#include "alloy/exec.hpp"
#include "alloy/store.hpp"
#include "alloy/safetensors.hpp"
#include "alloy/merge.hpp"
#include "alloy/align.hpp"
#include "alloy/continual.hpp"
