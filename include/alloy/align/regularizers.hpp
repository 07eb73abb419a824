#pragma once
// Soft alignment: penalties that pull the task weights T toward the global weights G during
// training, alternatives and complements to PAM's hard reset. Each returns its value (summed over
// every tensor of the stores) and adds its gradient with respect to T into `gradient`, in place,
// so it plugs into any optimizer that reads gradients from a store.
//
//   l2_pull:            (strength / 2) sum_{i in M} (T_i - G_i)^2          M: all, or G's top p
//   sign_agreement:      strength sum_{i in M} max(0, -sign(G_i) T_i)      M: G's top p
//                        (zero while T agrees with G's sign; grows with how far T crosses it)
//   cosine_alignment:    strength (1 - cos(T - G0, G - G0)), per tensor    the task update against
//                        the global update since the initial weights G0
//
// Masks come from top_magnitude_masks(G, p), computed once per task, as PAM does.

#include <bit>
#include <cmath>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/exec/select.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

// Top-p masks per tensor name, in a backend's mask type (bit_mask on the CPU).
template <class Mask>
using masks_by_name = std::map<std::string, Mask, std::less<>>;
using tensor_masks = masks_by_name<bit_mask>;

// Per tensor of G (floating dtypes only), the floor(p n) entries of largest magnitude.
template <class Backend, parameter_store Global>
masks_by_name<mask_type_t<Backend>> top_magnitude_masks(const Backend& backend, const Global& global, double p) {
  if (!(p >= 0.0 && p <= 1.0)) detail::fail(error_code::invalid_argument, "top-p fraction ", p, " must be in [0, 1]");
  masks_by_name<mask_type_t<Backend>> masks;
  for (const auto& name : global.names()) {
    const const_tensor_view g = global.view(name);
    if (!is_mergeable(g.dtype())) continue;
    const const_tensor_view inputs[] = {g};
    const auto keep = static_cast<std::size_t>(p * static_cast<double>(g.numel()));
    masks.insert_or_assign(std::string(name), rank_band_mask(backend, inputs, g.numel(), detail::first_value{}, 0, keep));
  }
  return masks;
}

namespace detail {

struct aligned_tensor {
  std::string_view name;
  const_tensor_view g, t, g0;
  tensor_view gradient;
};

// Every tensor of G (floating dtypes only) with T's, the gradient's (and G0's) of the same name,
// all checked before a regularizer computes anything.
template <parameter_store Global, parameter_store Task, mutable_parameter_store Gradient, class Initial = Global>
std::vector<aligned_tensor> aligned_tensors(std::string_view what, const Global& global, const Task& task,
                                            Gradient& gradient, const Initial* initial = nullptr) {
  std::vector<aligned_tensor> tensors;
  for (const auto& name : global.names()) {
    const const_tensor_view g = global.view(name);
    if (!is_mergeable(g.dtype())) continue;
    const auto t = task.find(name);
    const auto grad = gradient.find_mutable(name);
    if (!t || !grad) {
      fail(error_code::not_found, what, ": tensor ", quoted{name}, " is missing from the ",
           t ? "gradient" : "task weights");
    }
    if (!(t->shape() == g.shape()) || !(grad->shape() == g.shape())) {
      fail(error_code::shape_mismatch, what, ": tensor ", quoted{name}, " has shape ", g.shape(),
           " in G but ", t->shape(), " in T and ", grad->shape(), " in the gradient");
    }
    aligned_tensor tensor{name, g, *t, {}, *grad};
    if (initial != nullptr) {
      const const_tensor_view g0 = initial->view(name);
      if (!(g0.shape() == g.shape())) {
        fail(error_code::shape_mismatch, what, ": tensor ", quoted{name}, " has shape ", g0.shape(), " in G0 but ",
             g.shape(), " in G");
      }
      tensor.g0 = g0;
    }
    tensors.push_back(tensor);
  }
  return tensors;
}

template <class Masks>
const typename Masks::mapped_type* mask_for(const Masks* masks, std::string_view name) {
  if (masks == nullptr) return nullptr;
  const auto it = masks->find(name);
  if (it == masks->end()) fail(error_code::not_found, "no top-p mask for tensor ", quoted{name});
  return &it->second;
}

// The regularizers' per-element forms: values are {G, T, gradient} (and G0 for the cosine).
// A null mask means every entry.

struct l2_pull_value {
  const std::uint64_t* mask;
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& v, std::size_t i, Sums&& sums) const {
    if (mask != nullptr && !mask_bit(mask, i)) return;
    const double d = static_cast<double>(v[1]) - static_cast<double>(v[0]);
    sums[0] += 0.5 * d * d;
  }
  // The CPU's block form: the same terms, summed in lanes (reduce.hpp).
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t first, double* sums) const {
    const float *g = columns[0], *t = columns[1];
    const auto term = [&](std::size_t j) {
      const double d = static_cast<double>(t[j]) - static_cast<double>(g[j]);
      return 0.5 * d * d;
    };
    if (mask == nullptr) {
      sums[0] += sum_in_lanes(count, term);
      return;
    }
    alignas(64) std::uint32_t in_mask[block_elements];
    unpack_bits(mask, first, count, in_mask);
    sums[0] += sum_in_lanes(count, [&](std::size_t j) {  // cleared outside the mask by bits, not a branch
      return std::bit_cast<double>(std::bit_cast<std::uint64_t>(term(j)) & (0ull - in_mask[j]));
    });
  }
};

struct l2_pull_gradient {
  const std::uint64_t* mask;
  float strength;
  template <class Values>
  ALLOY_HD float operator()(const Values& v, std::size_t i) const {
    if (mask != nullptr && !mask_bit(mask, i)) return v[2];
    return v[2] + strength * (v[1] - v[0]);
  }
  // The CPU's block form (the same values): the mask's bits expanded first, so the select vectorises.
  void evaluate_block(const float* const* columns, std::size_t, std::size_t count, std::size_t first,
                      float* results) const {
    alignas(64) std::uint32_t in_mask[block_elements];
    if (mask != nullptr) unpack_bits(mask, first, count, in_mask);
    const float *g = columns[0], *t = columns[1], *grad = columns[2];
    const float step = strength;  // a local: `results` could alias the member, which would block vectorising
    for (std::size_t j = 0; j < count; ++j) {
      const float pulled = grad[j] + step * (t[j] - g[j]);
      results[j] = mask == nullptr || in_mask[j] != 0 ? pulled : grad[j];
    }
  }
};

// sign(g) as a float, by selects (so that loops over blocks vectorise).
ALLOY_HD ALLOY_ALWAYS_INLINE float sign_of(float g) noexcept {
  return (g > 0.0f ? 1.0f : 0.0f) - (g < 0.0f ? 1.0f : 0.0f);
}

// > 0 when T is on the other side of zero from G.
ALLOY_HD ALLOY_ALWAYS_INLINE float sign_opposition(float g, float t) noexcept { return -sign_of(g) * t; }

struct sign_agreement_value {
  const std::uint64_t* mask;
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& v, std::size_t i, Sums&& sums) const {
    // Selects rather than branches (half of the entries are in the mask, unpredictably); adding
    // +0 outside it leaves the non-negative sum's bits as they are.
    const double opposition = static_cast<double>(sign_opposition(v[0], v[1]));
    const double term = opposition > 0.0 ? opposition : 0.0;
    sums[0] += mask_bit(mask, i) ? term : 0.0;
  }
  // The CPU's block form: the same terms, without branches, summed in lanes (reduce.hpp).
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t first, double* sums) const {
    alignas(64) std::uint32_t in_mask[block_elements];
    unpack_bits(mask, first, count, in_mask);
    const float *g = columns[0], *t = columns[1];
    // f32 terms (which widen exactly to the per-element form's f64 ones), kept or cleared by a bit
    // mask, as the gradient's block form does.
    sums[0] += sum_in_lanes(count, [&](std::size_t j) {
      const float opposition = sign_opposition(g[j], t[j]);
      const std::uint32_t keep = (opposition > 0.0f ? ~0u : 0u) & (0u - in_mask[j]);
      return std::bit_cast<float>(std::bit_cast<std::uint32_t>(opposition) & keep);
    });
  }
};

struct sign_agreement_gradient {
  const std::uint64_t* mask;
  float strength;
  template <class Values>
  ALLOY_HD float operator()(const Values& v, std::size_t i) const {
    if (!mask_bit(mask, i) || sign_opposition(v[0], v[1]) <= 0.0f) return v[2];
    return v[2] - strength * sign_of(v[0]);
  }
  // The CPU's block form (the same values), branch-free over the block.
  void evaluate_block(const float* const* columns, std::size_t, std::size_t count, std::size_t first,
                      float* results) const {
    alignas(64) std::uint32_t in_mask[block_elements];
    unpack_bits(mask, first, count, in_mask);
    const float *g = columns[0], *t = columns[1], *grad = columns[2];
    const float step = strength;  // a local: `results` could alias the member, which would block vectorising
    for (std::size_t j = 0; j < count; ++j) {
      // The push is kept or cleared by a bit mask: a select between computed floats would be
      // turned back into a branch (the compiler does not speculate floating-point arithmetic),
      // and the loop would stay scalar. Subtracting +0 leaves grad's bits as they are, -0 and NaN
      // included. (NaN opposition crosses: as above.)
      const float sign = sign_of(g[j]);
      const float opposition = -sign * t[j];
      const std::uint32_t keep = (opposition <= 0.0f ? 0u : ~0u) & (0u - in_mask[j]);
      results[j] = grad[j] - std::bit_cast<float>(std::bit_cast<std::uint32_t>(step * sign) & keep);
    }
  }
};

// values {G, T, G0, gradient}: |u|^2, |w|^2 and u.w of the task update u = T - G0 and the global
// update w = G - G0.
struct cosine_sums {
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& v, std::size_t, Sums&& sums) const {
    const double u = static_cast<double>(v[1]) - static_cast<double>(v[2]);
    const double w = static_cast<double>(v[0]) - static_cast<double>(v[2]);
    sums[0] += u * u;
    sums[1] += w * w;
    sums[2] += u * w;
  }
  // The CPU's block form: the same terms, summed in lanes (reduce.hpp).
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t, double* sums) const {
    const float *g = columns[0], *t = columns[1], *g0 = columns[2];
    const auto u = [&](std::size_t j) { return static_cast<double>(t[j]) - static_cast<double>(g0[j]); };
    const auto w = [&](std::size_t j) { return static_cast<double>(g[j]) - static_cast<double>(g0[j]); };
    sums[0] += sum_in_lanes(count, [&](std::size_t j) { return u(j) * u(j); });
    sums[1] += sum_in_lanes(count, [&](std::size_t j) { return w(j) * w(j); });
    sums[2] += sum_in_lanes(count, [&](std::size_t j) { return u(j) * w(j); });
  }
};

// d(1 - cos)/du = -(w / (|u||w|) - cos u / |u|^2), scaled: a = -strength / (|u||w|),
// b = strength cos / |u|^2.
struct cosine_gradient {
  float a, b;
  template <class Values>
  ALLOY_HD float operator()(const Values& v, std::size_t) const {
    return v[3] + a * (v[0] - v[2]) + b * (v[1] - v[2]);
  }
};

}  // namespace detail

// One tensor of each regularizer: adds the gradient into `gradient` and returns the value. `mask`
// is the words of the tensor's top-p mask in the backend's memory (null: every entry, for
// l2_pull only). The store-level functions below and the torch adapter call these; a backend
// compiled apart (the CUDA library) provides its own overloads, found by argument-dependent lookup.
namespace detail {
// A penalty over {G, T, gradient}: strength times the sum of `value`'s terms, and `add_gradient`
// applied to the gradient in place.
template <class Backend, class Value, class AddGradient>
double penalty_tensor(const Backend& backend, const_tensor_view g, const_tensor_view t, tensor_view gradient,
                      double strength, const Value& value, const AddGradient& add_gradient) {
  const const_tensor_view read[] = {g, t};  // the value reads G and T only
  const double total = reduce_sums(backend, read, g.numel(), 1, value)[0] * strength;
  const const_tensor_view inputs[] = {g, t, gradient};
  elementwise(backend, gradient, inputs, add_gradient);
  return total;
}
}  // namespace detail

template <class Backend>
double l2_pull_tensor(const Backend& backend, const_tensor_view g, const_tensor_view t, tensor_view gradient,
                      double strength, const std::uint64_t* mask = nullptr) {
  return detail::penalty_tensor(backend, g, t, gradient, strength, detail::l2_pull_value{mask},
                                detail::l2_pull_gradient{mask, static_cast<float>(strength)});
}

template <class Backend>
double sign_agreement_tensor(const Backend& backend, const_tensor_view g, const_tensor_view t, tensor_view gradient,
                             double strength, const std::uint64_t* mask) {
  return detail::penalty_tensor(backend, g, t, gradient, strength, detail::sign_agreement_value{mask},
                                detail::sign_agreement_gradient{mask, static_cast<float>(strength)});
}

template <class Backend>
double cosine_alignment_tensor(const Backend& backend, const_tensor_view g, const_tensor_view t, const_tensor_view g0,
                               tensor_view gradient, double strength) {
  const const_tensor_view read[] = {g, t, g0};
  const auto sums = reduce_sums(backend, read, g.numel(), 3, detail::cosine_sums{});
  const const_tensor_view inputs[] = {g, t, g0, gradient};
  const double norm_u = std::sqrt(sums[0]);
  const double norm_w = std::sqrt(sums[1]);
  if (norm_u == 0.0 || norm_w == 0.0) return 0.0;
  const double cosine = sums[2] / (norm_u * norm_w);
  elementwise(backend, gradient, inputs,
              detail::cosine_gradient{static_cast<float>(-strength / (norm_u * norm_w)),
                                      static_cast<float>(strength * cosine / (norm_u * norm_u))});
  return strength * (1.0 - cosine);
}

// L2 pull toward G, on every entry (masks == nullptr) or on the masked ones.
template <class Backend, parameter_store Global, parameter_store Task, mutable_parameter_store Gradient,
          class Masks = masks_by_name<mask_type_t<Backend>>>
double l2_pull(const Backend& backend, const Global& global, const Task& task, Gradient& gradient, double strength,
               const Masks* masks = nullptr) {
  const auto tensors = detail::aligned_tensors("l2_pull", global, task, gradient);
  for (const auto& tensor : tensors) (void)detail::mask_for(masks, tensor.name);  // every mask exists
  double value = 0.0;
  for (const auto& tensor : tensors) {
    const auto* mask = detail::mask_for(masks, tensor.name);
    value += l2_pull_tensor(backend, tensor.g, tensor.t, tensor.gradient, strength,
                            mask != nullptr ? mask->words() : nullptr);
  }
  return value;
}

// Hinge penalty on entries of T whose sign opposes G's, inside G's top-p masks.
template <class Backend, parameter_store Global, parameter_store Task, mutable_parameter_store Gradient, class Masks>
double sign_agreement(const Backend& backend, const Global& global, const Task& task, Gradient& gradient,
                      double strength, const Masks& masks) {
  const auto tensors = detail::aligned_tensors("sign_agreement", global, task, gradient);
  for (const auto& tensor : tensors) (void)detail::mask_for(&masks, tensor.name);
  double value = 0.0;
  for (const auto& tensor : tensors) {
    value += sign_agreement_tensor(backend, tensor.g, tensor.t, tensor.gradient, strength,
                                   detail::mask_for(&masks, tensor.name)->words());
  }
  return value;
}

// 1 - cosine between the task update T - G0 and the global update G - G0, per tensor, summed.
// Tensors where either update is zero contribute nothing (the angle is undefined).
template <class Backend, parameter_store Global, parameter_store Task, parameter_store Initial,
          mutable_parameter_store Gradient>
double cosine_alignment(const Backend& backend, const Global& global, const Task& task, const Initial& initial,
                        Gradient& gradient, double strength) {
  double value = 0.0;
  for (const auto& tensor : detail::aligned_tensors("cosine_alignment", global, task, gradient, &initial)) {
    value += cosine_alignment_tensor(backend, tensor.g, tensor.t, tensor.g0, tensor.gradient, strength);
  }
  return value;
}

}  // namespace alloy
