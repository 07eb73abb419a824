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

#include <cmath>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>

#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/exec/select.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

using tensor_masks = std::map<std::string, bit_mask, std::less<>>;

// Per tensor of G (floating dtypes only), the floor(p n) entries of largest magnitude.
template <parameter_store Global>
tensor_masks top_magnitude_masks(const cpu_backend& backend, const Global& global, double p) {
  if (!(p >= 0.0 && p <= 1.0)) detail::fail(error_code::invalid_argument, "top-p fraction ", p, " must be in [0, 1]");
  tensor_masks masks;
  for (const auto& name : global.names()) {
    const const_tensor_view g = global.view(name);
    if (!is_mergeable(g.dtype())) continue;
    const const_tensor_view inputs[] = {g};
    const auto keep = static_cast<std::size_t>(p * static_cast<double>(g.numel()));
    masks.insert_or_assign(std::string(name), rank_band_mask(backend, inputs, g.numel(),
                                                             [](const auto& v, std::size_t) { return v[0]; }, 0, keep));
  }
  return masks;
}

namespace detail {

// Calls fn(name, g, t, gradient view) for every tensor of G, checking T and the gradient match.
template <parameter_store Global, parameter_store Task, mutable_parameter_store Gradient, class Fn>
void for_each_aligned_tensor(std::string_view what, const Global& global, const Task& task, Gradient& gradient,
                             Fn&& fn) {
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
    fn(std::string_view(name), g, *t, *grad);
  }
}

inline const bit_mask* mask_for(const tensor_masks* masks, std::string_view name) {
  if (masks == nullptr) return nullptr;
  const auto it = masks->find(name);
  if (it == masks->end()) fail(error_code::not_found, "no top-p mask for tensor ", quoted{name});
  return &it->second;
}

}  // namespace detail

// L2 pull toward G, on every entry (masks == nullptr) or on the masked ones.
template <parameter_store Global, parameter_store Task, mutable_parameter_store Gradient>
double l2_pull(const cpu_backend& backend, const Global& global, const Task& task, Gradient& gradient, double strength,
               const tensor_masks* masks = nullptr) {
  double value = 0.0;
  const auto lambda = static_cast<float>(strength);
  detail::for_each_aligned_tensor("l2_pull", global, task, gradient,
                                  [&](std::string_view name, const_tensor_view g, const_tensor_view t, tensor_view grad) {
    const bit_mask* mask = detail::mask_for(masks, name);
    const const_tensor_view inputs[] = {g, t, grad};
    value += reduce_sum<1>(backend, inputs, g.numel(), [mask](const auto& v, std::size_t i) {
      if (mask != nullptr && !mask->test(i)) return std::array<double, 1>{0.0};
      const double d = static_cast<double>(v[1]) - static_cast<double>(v[0]);
      return std::array<double, 1>{0.5 * d * d};
    })[0] * strength;
    const std::uint64_t* bits = mask != nullptr ? mask->words() : nullptr;
    elementwise(backend, grad, inputs, [bits, lambda](const auto& v, std::size_t i) {
      if (bits != nullptr && !((bits[i >> 6] >> (i & 63)) & 1u)) return v[2];
      return v[2] + lambda * (v[1] - v[0]);
    });
  });
  return value;
}

// Hinge penalty on entries of T whose sign opposes G's, inside G's top-p masks.
template <parameter_store Global, parameter_store Task, mutable_parameter_store Gradient>
double sign_agreement(const cpu_backend& backend, const Global& global, const Task& task, Gradient& gradient,
                      double strength, const tensor_masks& masks) {
  double value = 0.0;
  const auto lambda = static_cast<float>(strength);
  detail::for_each_aligned_tensor("sign_agreement", global, task, gradient,
                                  [&](std::string_view name, const_tensor_view g, const_tensor_view t, tensor_view grad) {
    const bit_mask* mask = detail::mask_for(&masks, name);
    const const_tensor_view inputs[] = {g, t, grad};
    const auto opposition = [](float gv, float tv) {
      const float sign = static_cast<float>((gv > 0) - (gv < 0));
      return -sign * tv;  // > 0 when T is on the other side of zero from G
    };
    value += reduce_sum<1>(backend, inputs, g.numel(), [mask, opposition](const auto& v, std::size_t i) {
      if (!mask->test(i)) return std::array<double, 1>{0.0};
      return std::array<double, 1>{std::max(0.0, static_cast<double>(opposition(v[0], v[1])))};
    })[0] * strength;
    const std::uint64_t* bits = mask->words();
    elementwise(backend, grad, inputs, [bits, lambda, opposition](const auto& v, std::size_t i) {
      if (!((bits[i >> 6] >> (i & 63)) & 1u) || opposition(v[0], v[1]) <= 0.0f) return v[2];
      const float sign = static_cast<float>((v[0] > 0) - (v[0] < 0));
      return v[2] - lambda * sign;
    });
  });
  return value;
}

// 1 - cosine between the task update T - G0 and the global update G - G0, per tensor, summed.
// Tensors where either update is zero contribute nothing (the angle is undefined).
template <parameter_store Global, parameter_store Task, parameter_store Initial, mutable_parameter_store Gradient>
double cosine_alignment(const cpu_backend& backend, const Global& global, const Task& task, const Initial& initial,
                        Gradient& gradient, double strength) {
  double value = 0.0;
  detail::for_each_aligned_tensor("cosine_alignment", global, task, gradient,
                                  [&](std::string_view name, const_tensor_view g, const_tensor_view t, tensor_view grad) {
    const const_tensor_view g0 = initial.view(name);
    if (!(g0.shape() == g.shape())) {
      detail::fail(error_code::shape_mismatch, "cosine_alignment: tensor ", detail::quoted{name}, " has shape ",
                   g0.shape(), " in G0 but ", g.shape(), " in G");
    }
    const const_tensor_view inputs[] = {g, t, g0, grad};
    const auto sums = reduce_sum<3>(backend, inputs, g.numel(), [](const auto& v, std::size_t) {
      const double u = static_cast<double>(v[1]) - static_cast<double>(v[2]);  // task update
      const double w = static_cast<double>(v[0]) - static_cast<double>(v[2]);  // global update
      return std::array<double, 3>{u * u, w * w, u * w};
    });
    const double norm_u = std::sqrt(sums[0]);
    const double norm_w = std::sqrt(sums[1]);
    if (norm_u == 0.0 || norm_w == 0.0) return;
    const double cosine = sums[2] / (norm_u * norm_w);
    value += strength * (1.0 - cosine);
    // d(1 - cos)/du = -(w / (|u||w|) - cos u / |u|^2)
    const auto a = static_cast<float>(-strength / (norm_u * norm_w));
    const auto b = static_cast<float>(strength * cosine / (norm_u * norm_u));
    elementwise(backend, grad, inputs, [a, b](const auto& v, std::size_t) {
      return v[3] + a * (v[0] - v[2]) + b * (v[1] - v[2]);
    });
  });
  return value;
}

}  // namespace alloy
