#pragma once
// xtensor containers and adaptors as an alloy parameter store, without copies: each named
// expression's own memory is viewed, so merges and alignment write into it in place.
//
// Expressions must be contiguous and row-major (xtensor's default layout) with a value type alloy
// maps (float, double, alloy::float16, alloy::bfloat16, integers, bool). The store refers to the
// expressions themselves, which must outlive it, and reads their data pointer and shape at every
// lookup: a container that reallocates (`a = b` with a new shape; `a -= expr`, which xtensor may
// evaluate into a temporary and swap in) is still viewed correctly afterwards.

#include <array>
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
#include "alloy/store/borrowed_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy::xtensor_adapter {

class xtensor_store : public borrowed_store<xtensor_store> {
 public:
  // Adds a named container or adaptor (xt::xarray, xt::xtensor, a variable holding xt::adapt(...)).
  template <class Expression>
  void add(std::string name, Expression& expression) {
    using value_type = std::remove_cv_t<typename Expression::value_type>;
    static_assert(element_type<value_type>, "alloy has no dtype for this xtensor value type");
    if (expression.layout() != xt::layout_type::row_major) {
      detail::fail(error_code::invalid_argument, "xtensor expression ", detail::quoted{name},
                   " is not row-major; alloy views contiguous row-major memory only");
    }
    const shape dims = shape_of(expression);
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
    constexpr bool read_only =
        std::is_const_v<Expression> || std::is_const_v<std::remove_reference_t<decltype(*expression.data())>>;
    add_borrowed(std::move(name), &expression, &locate<Expression>, dtype_of_v<value_type>, read_only);
  }

  [[nodiscard]] static std::string_view description() noexcept { return "an xtensor_store"; }

 private:
  template <class Expression>
  static shape shape_of(const Expression& expression) {
    std::array<shape::extent_type, shape::max_rank> extents{};
    const auto rank = static_cast<std::size_t>(expression.dimension());
    if (rank > shape::max_rank) {
      detail::fail(error_code::limit, "xtensor expression of rank ", rank, " exceeds alloy's maximum of ",
                   shape::max_rank);
    }
    for (std::size_t axis = 0; axis < rank; ++axis) {
      extents[axis] = static_cast<shape::extent_type>(expression.shape()[axis]);
    }
    return shape(std::span<const shape::extent_type>(extents.data(), rank));
  }

  template <class Expression>
  static located locate(void* expression) {
    auto& e = *static_cast<Expression*>(expression);
    return {const_cast<std::byte*>(reinterpret_cast<const std::byte*>(e.data())), shape_of(e)};
  }
};

static_assert(mutable_parameter_store<xtensor_store>);

}  // namespace alloy::xtensor_adapter
