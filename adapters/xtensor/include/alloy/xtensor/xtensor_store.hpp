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
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy::xtensor_adapter {

class xtensor_store : public named_store<xtensor_store> {
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
    index_.add(std::move(name), "an xtensor_store");
    constexpr bool read_only =
        std::is_const_v<Expression> || std::is_const_v<std::remove_reference_t<decltype(*expression.data())>>;
    entries_.push_back({const_cast<void*>(static_cast<const void*>(&expression)), &resolve<Expression>,
                        dtype_of_v<value_type>, read_only});
  }

  [[nodiscard]] std::optional<const_tensor_view> find(std::string_view name) const {
    const auto position = index_.find(name);
    if (!position) return std::nullopt;
    return const_tensor_view(view_of(*position));
  }
  [[nodiscard]] std::optional<tensor_view> find_mutable(std::string_view name) {
    const auto position = index_.find(name);
    if (!position) return std::nullopt;
    if (entries_[*position].read_only) {
      detail::fail(error_code::invalid_argument, "xtensor expression ", detail::quoted{name}, " was added as const");
    }
    return view_of(*position);
  }
  [[nodiscard]] static std::string_view description() noexcept { return "an xtensor_store"; }

 private:
  struct located {
    std::byte* data;
    shape dims;
  };
  struct entry {
    void* expression;
    located (*locate)(void* expression);  // the data pointer and shape as they are now
    dtype type;
    bool read_only;
  };

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
  static located resolve(void* expression) {
    auto& e = *static_cast<Expression*>(expression);
    return {const_cast<std::byte*>(reinterpret_cast<const std::byte*>(e.data())), shape_of(e)};
  }

  [[nodiscard]] tensor_view view_of(std::size_t position) const {
    const entry& e = entries_[position];
    const located now = e.locate(e.expression);
    return tensor_view(now.data, e.type, now.dims);
  }

  std::vector<entry> entries_;
};

static_assert(mutable_parameter_store<xtensor_store>);

}  // namespace alloy::xtensor_adapter
