#pragma once
// alloy's alignment regularizers (alloy/align/regularizers.hpp) as differentiable torch
// functions: each returns a scalar tensor on the target's device that joins the loss, and
// autograd produces the same gradient as alloy's closed form (a test checks it). Compute in f32.
//
//   loss = task_loss + alloy::torch_adapter::l2_pull(*model, target, 1e-3)
//                    + alloy::torch_adapter::sign_agreement(*model, target, 1e-2);
//
// The sums run over the target's tensors (G's floating tensors) that the module holds by name.

#include <torch/torch.h>

#include <string>

#include "alloy/core/error.hpp"
#include "alloy/torch/alignment_target.hpp"

namespace alloy::torch_adapter {

namespace detail {

// Calls fn(T as f32, name) for every target tensor, T being the module's parameter (with autograd).
template <class Fn>
::torch::Tensor sum_over_target(const char* what, const ::torch::nn::Module& module, const alignment_target& target,
                                Fn&& fn) {
  const auto parameters = module.named_parameters(/*recurse=*/true);
  ::torch::Tensor total = ::torch::zeros({}, ::torch::TensorOptions().dtype(::torch::kFloat32).device(target.device()));
  for (const auto& name : target.names()) {
    const ::torch::Tensor* found = parameters.find(name);
    if (found == nullptr) {
      alloy::detail::fail(error_code::not_found, what, ": the module has no parameter named ", alloy::detail::quoted{name});
    }
    if (!(shape_of(*found) == shape_of(target.global(name)))) {
      alloy::detail::fail(error_code::shape_mismatch, what, ": tensor ", alloy::detail::quoted{name}, " has shape ",
                          shape_of(*found), " in the module but ", shape_of(target.global(name)), " in G");
    }
    total = total + fn(found->to(::torch::kFloat32), name);
  }
  return total;
}

}  // namespace detail

// (strength / 2) sum (T - G)^2, over every entry or only G's top-p entries.
inline ::torch::Tensor l2_pull(const ::torch::nn::Module& module, const alignment_target& target, double strength,
                               bool top_only = false) {
  return detail::sum_over_target("l2_pull", module, target, [&](const ::torch::Tensor& t, const std::string& name) {
    if (!top_only) {  // one fused kernel forward and backward
      return (0.5 * strength) * ::torch::mse_loss(t, target.global(name), at::Reduction::Sum);
    }
    return (0.5 * strength) * ((t - target.global(name)).square() * target.top_weight(name)).sum();
  });
}

// strength sum over G's top-p entries of max(0, -sign(G) T): zero while T keeps G's sign.
inline ::torch::Tensor sign_agreement(const ::torch::nn::Module& module, const alignment_target& target,
                                      double strength) {
  return detail::sum_over_target("sign_agreement", module, target, [&](const ::torch::Tensor& t, const std::string& name) {
    // relu(-sign(G) T) on the mask equals relu(w T) with w = -sign(G) there and 0 elsewhere.
    return strength * ::torch::relu(target.opposition_weight(name) * t).sum();
  });
}

// strength (1 - cos(T - G0, G - G0)) per tensor, summed; tensors where either update is zero
// contribute nothing (the angle is undefined). Needs target.set_initial(G0).
inline ::torch::Tensor cosine_alignment(const ::torch::nn::Module& module, const alignment_target& target,
                                        double strength) {
  return detail::sum_over_target("cosine_alignment", module, target, [&](const ::torch::Tensor& t, const std::string& name) {
    const ::torch::Tensor& g0 = target.initial(name);
    const ::torch::Tensor task_update = (t - g0).flatten();
    const ::torch::Tensor global_update = (target.global(name) - g0).flatten();
    const ::torch::Tensor norms = task_update.norm() * global_update.norm();
    // No branch on the host (no device sync): where() keeps the gradient of the chosen side only.
    const ::torch::Tensor defined = norms > 0;
    const ::torch::Tensor safe_norms = ::torch::where(defined, norms, ::torch::ones_like(norms));
    const ::torch::Tensor cosine = task_update.dot(global_update) / safe_norms;
    return ::torch::where(defined, strength * (1 - cosine), ::torch::zeros_like(cosine));
  });
}

}  // namespace alloy::torch_adapter
