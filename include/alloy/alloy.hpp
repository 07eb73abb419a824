#pragma once
// alloy: model merging and continual learning by aligned merging. The one header to include.

#include "alloy/core/config.hpp"
#include "alloy/core/convert.hpp"
#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/half.hpp"
#include "alloy/core/shape.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/file_io.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/name_index.hpp"
#include "alloy/store/parameter_store.hpp"
#include "alloy/store/safetensors_format.hpp"
#include "alloy/store/safetensors_store.hpp"
#include "alloy/store/safetensors_writer.hpp"
