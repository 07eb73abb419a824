#pragma once
// LoRA adapters merged by their products: the update a LoRA makes to a weight is scale B A, and
// that product, not A and B, is what a merge of several LoRAs means to the model. Merging A and
// B separately (mean of A times mean of B) is not the mean of the products, and depends on how
// each LoRA split its update between its factors; merging the products is exact and independent
// of that split, but a sum of rank-r products has rank up to t r. So a continual learner that
// keeps its global model as a LoRA of rank r merges the products (any merger: they are ordinary
// dense task vectors) and takes the merged update back to rank r by its truncated SVD, the best
// rank-r approximation (Eckart-Young); `lora_factorization::kept` says how much of it survives.
//
//   lora_products(backend, factors, scale)         each pair's scale B A, named after its weight
//   lora_factors_of(solver, products, like, scale)  rank-r factors whose products approximate them
//
// Names are PEFT's: `<module>.lora_A.weight` (rank x in) and `<module>.lora_B.weight`
// (out x rank); the product is named `<module>.weight`, the weight it updates. The products run
// in double precision on the host and are rounded once into f32; the SVDs come from the caller
// (the `svd_solver` concept of subspace.hpp: Eigen's on the CPU, torch's on any of its devices).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/continual/subspace.hpp"
#include "alloy/core/convert.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

// One LoRA factor pair of a store: the module it adapts and the names of its tensors.
struct lora_factor_pair {
  std::string module;  // `<module>`: the product is `<module>.weight`
  std::string a, b;    // `<module>.lora_A.weight` (rank x in), `<module>.lora_B.weight` (out x rank)
  std::size_t rank = 0, rows = 0, cols = 0;  // the product is rows (out) x cols (in)

  [[nodiscard]] std::string product_name() const { return module + ".weight"; }
};

inline constexpr std::string_view lora_a_suffix = ".lora_A.weight";
inline constexpr std::string_view lora_b_suffix = ".lora_B.weight";

// Every factor pair of `factors`, in the store's order of their A tensors. Every tensor must be
// a LoRA factor with its partner, 2-D, of a computable dtype, the pair's ranks equal.
template <parameter_store Store>
std::vector<lora_factor_pair> lora_factor_pairs(const Store& factors) {
  const auto module_of = [](std::string_view name, std::string_view suffix) -> std::string {
    if (name.size() <= suffix.size() || name.substr(name.size() - suffix.size()) != suffix) return {};
    return std::string(name.substr(0, name.size() - suffix.size()));
  };
  std::vector<lora_factor_pair> pairs;
  for (const auto& listed : factors.names()) {
    const std::string name(listed);
    const std::string a_module = module_of(name, lora_a_suffix), b_module = module_of(name, lora_b_suffix);
    if (a_module.empty() && b_module.empty()) {
      detail::fail(error_code::invalid_argument, "LoRA factors: tensor ", detail::quoted{name}, " is not a LoRA factor (<module>",
                   lora_a_suffix, " or <module>", lora_b_suffix, ")");
    }
    const std::string& module = a_module.empty() ? b_module : a_module;
    const std::string partner = module + std::string(a_module.empty() ? lora_a_suffix : lora_b_suffix);
    if (!factors.find(partner)) {
      detail::fail(error_code::not_found, "LoRA factors: tensor ", detail::quoted{name}, " has no partner ", detail::quoted{partner});
    }
    if (a_module.empty()) continue;  // (a B: its pair is listed with its A)
    const const_tensor_view a = *factors.find(name), b = *factors.find(partner);
    detail::check_computable(a, "LoRA factor '" + name + "'");
    detail::check_computable(b, "LoRA factor '" + partner + "'");
    if (a.shape().rank() != 2 || b.shape().rank() != 2 || a.shape()[0] != b.shape()[1]) {
      detail::fail(error_code::shape_mismatch, "LoRA factors of ", detail::quoted{module}, ": A has shape ", a.shape(),
                   " and B ", b.shape(), " (A must be rank x in and B out x rank)");
    }
    pairs.push_back({module, name, partner, static_cast<std::size_t>(a.shape()[0]), static_cast<std::size_t>(b.shape()[0]),
                     static_cast<std::size_t>(a.shape()[1])});
  }
  return pairs;
}

// Each pair's update scale B A (out x in, f32), named `<module>.weight`.
template <parameter_store Store>
memory_store lora_products(const cpu_backend& backend, const Store& factors, double scale) {
  memory_store products;
  for (const auto& pair : lora_factor_pairs(factors)) {
    const std::vector<double> a = detail::to_doubles(*factors.find(pair.a));
    const std::vector<double> b = detail::to_doubles(*factors.find(pair.b));
    std::vector<double> product(pair.rows * pair.cols);
    detail::multiply(backend, b, false, a, false, pair.rows, pair.rank, pair.cols, product);
    for (double& value : product) value *= scale;
    const shape dims{static_cast<std::int64_t>(pair.rows), static_cast<std::int64_t>(pair.cols)};
    convert(const_tensor_view(std::span<const double>(product), dims), products.insert(pair.product_name(), dtype::f32, dims));
  }
  return products;
}

// Rank-r factors of merged products, and the share of the products they keep.
struct lora_factorization {
  memory_store factors;
  // sum over tensors of |scale B A|^2 / sum of |product|^2 (1 when every product has rank <= r,
  // or all are zero): what truncating to the LoRA's rank kept of the merged update.
  double kept = 1;
};

// Factors with the names, shapes and dtypes of `like` whose products scale B A are the truncated
// SVDs of `products` (each `<module>.weight`, out x in): with U S V^T = svd(product),
// B = U_r diag(sqrt(S_r / scale)) and A = diag(sqrt(S_r / scale)) V_r^T, the update split evenly
// between the factors. Directions beyond the product's own rank get zero factors.
template <svd_solver Solver, parameter_store Like>
lora_factorization lora_factors_of(const Solver& solver, const memory_store& products, const Like& like,
                                   double scale) {
  if (!(scale > 0) || !std::isfinite(scale)) detail::fail(error_code::invalid_argument, "LoRA factors: scale = ", scale, " must be positive");
  lora_factorization result;
  double kept = 0, total = 0;
  for (const auto& pair : lora_factor_pairs(like)) {
    const std::string name = pair.product_name();
    const auto found = products.find(name);
    if (!found) detail::fail(error_code::not_found, "LoRA factors: the merged products lack ", detail::quoted{name});
    const shape dims{static_cast<std::int64_t>(pair.rows), static_cast<std::int64_t>(pair.cols)};
    if (!(found->shape() == dims)) {
      detail::fail(error_code::shape_mismatch, "LoRA factors: product ", detail::quoted{name}, " has shape ", found->shape(),
                   " but the factors of ", detail::quoted{pair.module}, " make ", dims);
    }
    detail::check_computable(*found, "LoRA product '" + name + "'");
    const std::vector<double> product = detail::to_doubles(*found);
    const svd_factors svd = detail::checked_svd(solver, product, pair.rows, pair.cols, "LoRA factors");
    std::vector<double> a(pair.rank * pair.cols, 0.0), b(pair.rows * pair.rank, 0.0);
    const std::size_t kept_rank = std::min(pair.rank, svd.singular_values.size());
    for (std::size_t k = 0; k < svd.singular_values.size(); ++k) {
      const double s = svd.singular_values[k];
      total += s * s;
      if (k >= kept_rank) continue;
      kept += s * s;
      const double half = std::sqrt(std::max(s, 0.0) / scale);
      for (std::size_t i = 0; i < pair.rows; ++i) b[i * pair.rank + k] = svd.u[i * pair.rows + k] * half;
      for (std::size_t j = 0; j < pair.cols; ++j) a[k * pair.cols + j] = svd.v[j * pair.cols + k] * half;
    }
    const const_tensor_view like_a = *like.find(pair.a), like_b = *like.find(pair.b);
    convert(const_tensor_view(std::span<const double>(a), like_a.shape()), result.factors.insert(pair.a, like_a.dtype(), like_a.shape()));
    convert(const_tensor_view(std::span<const double>(b), like_b.shape()), result.factors.insert(pair.b, like_b.dtype(), like_b.shape()));
  }
  result.kept = total > 0 ? kept / total : 1.0;
  return result;
}

}  // namespace alloy
