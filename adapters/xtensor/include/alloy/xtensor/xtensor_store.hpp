#pragma once
// xtensor containers and adaptors as an alloy parameter store, without copies: each named
// expression's own memory is viewed, so merges and alignment write into it in place.
//
// Expressions must be contiguous and row-major (xtensor's default layout) with a value type alloy
// maps (float, double, alloy::float16, alloy::bfloat16, integers, bool). The store keeps pointers:
// the containers must outlive it and must not be resized while it is in use.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <xtensor/xlayout.hpp>

#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy::xtensor_adapter {

class xtensor_store : public named_store<xtensor_store> {
 public:
  // Adds a named container or adaptor (xt::xarray, xt::xtensor, xt::adapt(...)).
  template <class Expression>
  void add(std::string name, Expression& expression) {
    using value_type = std::remove_cv_t<typename Expression::value_type>;
    static_assert(element_type<value_type>, "alloy has no dtype for this xtensor value type");
    if (expression.layout() != xt::layout_type::row_major) {
      detail::fail(error_code::invalid_argument, "xtensor expression ", detail::quoted{name},
                   " is not row-major; alloy views contiguous row-major memory only");
    }
    std::vector<shape::extent_type> extents(expression.shape().begin(), expression.shape().end());
    const shape dims{std::span<const shape::extent_type>(extents)};
    // Row-major strides of a contiguous expression (xtensor reports 0 for dimensions of size 1).
    std::int64_t expected = 1;
    for (std::size_t axis = dims.rank(); axis-- > 0;) {
      const auto stride = static_cast<std::int64_t>(expression.strides()[axis]);
      if (dims[axis] > 1 && stride != expected) {
        detail::fail(error_code::invalid_argument, "xtensor expression ", detail::quoted{name},
                     " is not contiguous (stride ", stride, " on axis ", axis, ", expected ", expected, ")");
      }
      expected *= dims[axis];
    }
    index_.add(std::move(name), "an xtensor_store");
    using pointer = std::conditional_t<std::is_const_v<Expression>, const std::byte*, std::byte*>;
    data_.push_back(const_cast<std::byte*>(reinterpret_cast<pointer>(expression.data())));
    read_only_.push_back(std::is_const_v<Expression> || std::is_const_v<std::remove_reference_t<decltype(*expression.data())>>);
    dtypes_.push_back(dtype_of_v<value_type>);
    shapes_.push_back(dims);
  }

  [[nodiscard]] std::optional<const_tensor_view> find(std::string_view name) const {
    const auto position = index_.find(name);
    if (!position) return std::nullopt;
    return const_tensor_view(data_[*position], dtypes_[*position], shapes_[*position]);
  }
  [[nodiscard]] std::optional<tensor_view> find_mutable(std::string_view name) {
    const auto position = index_.find(name);
    if (!position) return std::nullopt;
    if (read_only_[*position]) {
      detail::fail(error_code::invalid_argument, "xtensor expression ", detail::quoted{name}, " was added as const");
    }
    return tensor_view(data_[*position], dtypes_[*position], shapes_[*position]);
  }
  [[nodiscard]] static std::string_view description() noexcept { return "an xtensor_store"; }

 private:
  std::vector<std::byte*> data_;
  std::vector<bool> read_only_;
  std::vector<dtype> dtypes_;
  std::vector<shape> shapes_;
};

static_assert(mutable_parameter_store<xtensor_store>);

}  // namespace alloy::xtensor_adapter
