#pragma once
// Eigen matrices, arrays, vectors and Maps as an alloy parameter store, without copies: each named
// object's own memory is viewed, so merges and alignment write into it in place (as Eigen::Map
// views memory it does not own).
//
// Layout. alloy tensors are row-major. A row-major matrix (or any vector) is viewed with its own
// shape: [rows, cols] (vectors: [size]). A column-major matrix, Eigen's default, holds in memory
// the row-major image of its transpose; viewing it as [rows, cols] would be wrong and as
// [cols, rows] would silently disagree with a checkpoint of the same layer. So `add` refuses it
// and names both ways out: declare the matrix Eigen::RowMajor, or call `add_transposed`, which
// views it as the [cols, rows] tensor its memory is. Element-wise merges and alignment do not care
// which one is chosen, as long as every store of the same model chooses the same.
//
// The store refers to the objects themselves, which must outlive it, and reads their data pointer
// and size at every lookup: a matrix that is resized or reassigned is viewed as it is now.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <Eigen/Core>

#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/borrowed_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {
// Eigen's 16-bit floats have the IEEE binary16 and bfloat16 bit layouts.
template <> struct dtype_of<Eigen::half> : std::integral_constant<dtype, dtype::f16> {};
template <> struct dtype_of<Eigen::bfloat16> : std::integral_constant<dtype, dtype::bf16> {};
static_assert(sizeof(Eigen::half) == 2 && sizeof(Eigen::bfloat16) == 2);
}  // namespace alloy

namespace alloy::eigen_adapter {

class eigen_store : public borrowed_store<eigen_store> {
 public:
  // Adds a named matrix, array, vector or Map. Const objects (and Maps of const data) are read-only.
  template <class Derived>
  void add(std::string name, Eigen::DenseBase<Derived>& object) {
    add_object(std::move(name), object.derived(), layout::natural, false);
  }
  template <class Derived>
  void add(std::string name, const Eigen::DenseBase<Derived>& object) {
    add_object(std::move(name), object.derived(), layout::natural, true);
  }
  // The store refers to the object: a temporary (an unnamed Map, an expression) would dangle.
  template <class Derived>
  void add(std::string name, const Eigen::DenseBase<Derived>&& object) = delete;

  // Adds a column-major matrix as the row-major [cols, rows] tensor its memory holds.
  template <class Derived>
  void add_transposed(std::string name, Eigen::DenseBase<Derived>& object) {
    add_object(std::move(name), object.derived(), layout::transposed, false);
  }
  template <class Derived>
  void add_transposed(std::string name, const Eigen::DenseBase<Derived>& object) {
    add_object(std::move(name), object.derived(), layout::transposed, true);
  }
  template <class Derived>
  void add_transposed(std::string name, const Eigen::DenseBase<Derived>&& object) = delete;

  [[nodiscard]] static std::string_view description() noexcept { return "an eigen_store"; }

 private:
  enum class layout : bool { natural, transposed };

  // The shape an object is viewed with (validated for its layout by add_object).
  template <layout chosen, class Object>
  static shape shape_of(const Object& object) {
    const auto rows = static_cast<shape::extent_type>(object.rows());
    const auto cols = static_cast<shape::extent_type>(object.cols());
    if constexpr (Object::IsVectorAtCompileTime) return shape{static_cast<shape::extent_type>(object.size())};
    return chosen == layout::transposed ? shape{cols, rows} : shape{rows, cols};
  }

  template <class Object, layout chosen>
  static located locate(void* object) {
    auto& o = *static_cast<Object*>(object);
    if constexpr (!Object::IsRowMajor && !Object::IsVectorAtCompileTime && chosen == layout::natural) {
      if (o.rows() > 1 && o.cols() > 1) {  // added as one row or column, since resized
        detail::fail(error_code::invalid_argument, "an Eigen object of an eigen_store is now a column-major ", o.rows(),
                     "x", o.cols(), " matrix; add such matrices with add_transposed() or declare them Eigen::RowMajor");
      }
    }
    return {const_cast<std::byte*>(reinterpret_cast<const std::byte*>(o.data())), shape_of<chosen>(o)};
  }

  template <class Object>
  void add_object(std::string name, const Object& object, layout requested, bool const_object) {
    const bool transposed = requested == layout::transposed;
    using scalar = std::remove_cv_t<typename Object::Scalar>;
    static_assert(element_type<scalar>, "alloy has no dtype for this Eigen scalar type");
    static_assert(bool(Object::Flags & Eigen::DirectAccessBit),
                  "alloy views Eigen objects with direct access to their memory (matrices, arrays, Maps), "
                  "not expressions: evaluate the expression into a matrix first");
    const auto rows = static_cast<shape::extent_type>(object.rows());
    const auto cols = static_cast<shape::extent_type>(object.cols());
    // Contiguous: consecutive inner elements and no padding between outer slices.
    if ((object.innerStride() != 1 && object.size() > 1) ||
        (object.outerStride() != object.innerSize() && object.outerSize() > 1)) {
      detail::fail(error_code::invalid_argument, "Eigen object ", detail::quoted{name}, " (", rows, "x", cols,
                   ") is not contiguous (inner stride ", object.innerStride(), ", outer stride ", object.outerStride(),
                   "); alloy views contiguous memory only");
    }
    constexpr bool is_vector = Object::IsVectorAtCompileTime;
    if (is_vector && transposed) {
      detail::fail(error_code::invalid_argument, "Eigen object ", detail::quoted{name},
                   " is a vector; add it with add(), which views it as a 1-D tensor");
    }
    if (!is_vector && transposed && Object::IsRowMajor) {
      detail::fail(error_code::invalid_argument, "Eigen object ", detail::quoted{name},
                   " is row-major; add it with add(), which views it as [", rows, ", ", cols, "]");
    }
    if (!is_vector && !transposed && !Object::IsRowMajor && rows > 1 && cols > 1) {
      detail::fail(error_code::invalid_argument, "Eigen object ", detail::quoted{name}, " is a column-major ", rows,
                   "x", cols, " matrix, whose memory is the row-major ", cols, "x", rows,
                   " transpose; declare it Eigen::RowMajor to view it as [", rows, ", ", cols,
                   "], or add it with add_transposed() to view it as [", cols, ", ", rows, "]");
    }
    // Maps of const data (Eigen::Map<const Eigen::MatrixXf>) are not lvalues: read-only too.
    const bool read_only = const_object || !bool(Object::Flags & Eigen::LvalueBit);
    add_borrowed(std::move(name), &object,
                 transposed ? &locate<Object, layout::transposed> : &locate<Object, layout::natural>,
                 dtype_of_v<scalar>, read_only);
  }
};

static_assert(mutable_parameter_store<eigen_store>);

}  // namespace alloy::eigen_adapter
