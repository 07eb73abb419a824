#pragma once
// alloy's core: dtypes (f32, f16, bf16 with round-to-nearest-even, integers, 8-bit floats),
// shapes, tensor views, conversion between dtypes, and errors (alloy::error, alloy::fail).

#include "alloy/core/config.hpp"
#include "alloy/core/convert.hpp"
#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/half.hpp"
#include "alloy/core/lookup.hpp"
#include "alloy/core/shape.hpp"
#include "alloy/core/tensor_view.hpp"
