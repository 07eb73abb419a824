#pragma once
// alloy's alignment regularizers (alloy/align/regularizers.hpp) as differentiable torch
// functions: each returns a scalar tensor on the target's device that joins the loss, and its
// gradient with respect to the module's parameters is alloy's closed form (a test checks both
// engines against it). Compute in f32.
//
//   loss = task_loss + alloy::torch_adapter::l2_pull(*model, target, 1e-3)
//                    + alloy::torch_adapter::sign_agreement(*model, target, 1e-2);
//
// The sums run over the target's tensors (G's floating tensors) that the module holds by name.
//
// Engines. Torch operations, differentiated by autograd, on any device (the default). Or, on CPU
// with align_engine::alloy_cpu, one autograd function per tensor whose forward runs alloy's
// closed-form kernels (value and gradient) and whose backward scales the saved gradient. Both are
// tested against the closed form. The closed-form engine is not the default because it measured
// slower: 2.1 ms against 0.64 ms for a regularized step of a 100 k-parameter MLP, 18.5 ms against
// 7.2 ms at 800 k (docs/benchmarks.md); alloy's reductions are the part to speed up.

#include <torch/torch.h>

#include <functional>
#include <string>
#include <utility>

#include "alloy/align/regularizers.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/torch/alignment_target.hpp"
#include "alloy/torch/tensor_store.hpp"

namespace alloy::torch_adapter {

namespace detail {

// The closed form of one tensor's penalty: adds the gradient into `gradient` (a zeroed store
// holding the tensor under its name) and returns the value.
using closed_form = std::function<double(const tensor_store& task, tensor_store& gradient)>;

struct closed_form_penalty : ::torch::autograd::Function<closed_form_penalty> {
  static ::torch::Tensor forward(::torch::autograd::AutogradContext* context, const ::torch::Tensor& task,
                                 const std::string& name, const closed_form& penalty) {
    const ::torch::Tensor values = task.detach();
    ::torch::Tensor gradient = ::torch::zeros(values.sizes(), ::torch::kFloat32);
    const tensor_store task_store({{name, values}});
    tensor_store gradient_store({{name, gradient}});
    const double value = penalty(task_store, gradient_store);
    context->save_for_backward({gradient});
    context->saved_data["dtype"] = static_cast<std::int64_t>(task.scalar_type());
    return ::torch::tensor(value, ::torch::kFloat32);
  }

  static ::torch::autograd::variable_list backward(::torch::autograd::AutogradContext* context,
                                                   ::torch::autograd::variable_list outputs) {
    const auto saved = context->get_saved_variables();
    const auto type = static_cast<::torch::ScalarType>(context->saved_data["dtype"].toInt());
    return {(outputs[0] * saved[0]).to(type), ::torch::Tensor(), ::torch::Tensor()};
  }
};

inline bool use_closed_form(align_engine engine, const alignment_target& target, const ::torch::Tensor& parameter) {
  const bool viewable = target.device().is_cpu() && parameter.device().is_cpu() && parameter.is_contiguous() &&
                        dtype_of(parameter).has_value() && is_mergeable(*dtype_of(parameter));
  if (engine == align_engine::alloy_cpu && !viewable) {
    alloy::detail::fail(error_code::invalid_argument, "regularizer: the alloy_cpu engine needs contiguous CPU "
                        "f32/f16/bf16 parameters and a CPU target");
  }
  return engine == align_engine::alloy_cpu;  // automatic: torch operations (see the header comment)
}

// Sums, over every target tensor, closed(name) on the closed-form engine or with_ops(T as f32,
// name) on torch operations; T is the module's parameter, with autograd.
template <class ClosedForm, class WithOps>
::torch::Tensor sum_over_target(const char* what, const ::torch::nn::Module& module, const alignment_target& target,
                                align_engine engine, ClosedForm&& closed, WithOps&& with_ops) {
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
    if (use_closed_form(engine, target, *found)) {
      total = total + closed_form_penalty::apply(*found, name, closed_form(closed(name)));
    } else {
      total = total + with_ops(found->to(::torch::kFloat32), name);
    }
  }
  return total;
}

// G's (and G0's) tensor of that name as a one-tensor store, for the closed forms.
inline tensor_store one_tensor(const std::string& name, const ::torch::Tensor& tensor) {
  return tensor_store({{name, tensor}});
}

}  // namespace detail

// (strength / 2) sum (T - G)^2, over every entry or only G's top-p entries.
inline ::torch::Tensor l2_pull(const ::torch::nn::Module& module, const alignment_target& target, double strength,
                               bool top_only = false, align_engine engine = align_engine::automatic) {
  return detail::sum_over_target(
      "l2_pull", module, target, engine,
      [&](const std::string& name) {
        return [&, name](const tensor_store& task, tensor_store& gradient) {
          return alloy::l2_pull(cpu_backend{}, detail::one_tensor(name, target.global(name)), task, gradient, strength,
                                top_only ? &target.masks() : nullptr);
        };
      },
      [&](const ::torch::Tensor& t, const std::string& name) {
        if (!top_only) return (0.5 * strength) * ::torch::mse_loss(t, target.global(name), at::Reduction::Sum);
        return (0.5 * strength) * ((t - target.global(name)).square() * target.top_weight(name)).sum();
      });
}

// strength sum over G's top-p entries of max(0, -sign(G) T): zero while T keeps G's sign.
inline ::torch::Tensor sign_agreement(const ::torch::nn::Module& module, const alignment_target& target,
                                      double strength, align_engine engine = align_engine::automatic) {
  return detail::sum_over_target(
      "sign_agreement", module, target, engine,
      [&](const std::string& name) {
        return [&, name](const tensor_store& task, tensor_store& gradient) {
          return alloy::sign_agreement(cpu_backend{}, detail::one_tensor(name, target.global(name)), task, gradient,
                                       strength, target.masks());
        };
      },
      [&](const ::torch::Tensor& t, const std::string& name) {
        // relu(-sign(G) T) on the mask equals relu(w T) with w = -sign(G) there and 0 elsewhere.
        return strength * ::torch::relu(target.opposition_weight(name) * t).sum();
      });
}

// strength (1 - cos(T - G0, G - G0)) per tensor, summed; tensors where either update is zero
// contribute nothing (the angle is undefined). Needs target.set_initial(G0).
inline ::torch::Tensor cosine_alignment(const ::torch::nn::Module& module, const alignment_target& target,
                                        double strength, align_engine engine = align_engine::automatic) {
  return detail::sum_over_target(
      "cosine_alignment", module, target, engine,
      [&](const std::string& name) {
        return [&, name](const tensor_store& task, tensor_store& gradient) {
          return alloy::cosine_alignment(cpu_backend{}, detail::one_tensor(name, target.global(name)), task,
                                         detail::one_tensor(name, target.initial(name)), gradient, strength);
        };
      },
      [&](const ::torch::Tensor& t, const std::string& name) {
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
