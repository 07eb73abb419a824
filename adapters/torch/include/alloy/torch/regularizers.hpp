#pragma once
// alloy's alignment regularizers (alloy/align/regularizers.hpp) as differentiable torch
// functions: each returns a scalar tensor that joins the loss, and its gradient with respect to
// the module's parameters is alloy's closed form, computed by alloy's backend for the
// parameter's device (the same functors as the CPU's; alloy's CUDA backend on torch's current
// stream in ALLOY_TORCH_CUDA builds). This file is only the autograd glue: one function per tensor
// whose forward runs the closed form (value and gradient) and whose backward scales the saved
// gradient. Compute in f32; parameters keep their dtype.
//
//   loss = task_loss + alloy::torch_adapter::l2_pull(*model, target, 1e-3)
//                    + alloy::torch_adapter::sign_agreement(*model, target, 1e-2);
//
// The sums run over the target's tensors (G's floating tensors) that the module holds by name.
// A parameter on a device without an alloy backend (or on another device than the target) is
// staged through host memory.

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "alloy/align/regularizers.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/torch/alignment_target.hpp"
#include "alloy/torch/tensor_store.hpp"

#if defined(ALLOY_TORCH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "alloy/cuda.hpp"
#include "alloy/torch/cuda_backend.hpp"
#endif

namespace alloy::torch_adapter {

namespace detail {

// One tensor in the form the closed forms read: G, T and G0 (when set) as f32 or T's own dtype,
// the mask's words, all where the backend that runs them reads them.
struct penalty_inputs {
  ::torch::Tensor g, t, g0;
  const std::uint64_t* mask = nullptr;
};

// The closed form of one tensor's penalty on a backend: adds the gradient into `gradient` and
// returns the value. Called with alloy::cpu_backend or alloy::cuda::backend.
using closed_form = std::function<double(const penalty_inputs&, tensor_view gradient)>;

// A view of a tensor the forward has made contiguous and f32 (or found so, or bf16/f16 in place):
// no checks beyond the dtype, since this runs for every tensor of every training step.
inline tensor_view view_in_place(const std::string& name, const ::torch::Tensor& tensor) {
  const auto type = dtype_of(tensor);
  if (!type || !is_mergeable(*type) || !tensor.is_contiguous()) {
    alloy::fail(error_code::invalid_argument, "regularizer: tensor ", alloy::quoted{name}, " cannot be viewed in place");
  }
  return {static_cast<std::byte*>(tensor.data_ptr()), *type, shape_of(tensor)};
}

// Runs body(backend) with alloy's backend for `device` (CPU, or CUDA in ALLOY_TORCH_CUDA builds).
template <class Body>
double with_backend(::torch::Device device, Body&& body) {
#if defined(ALLOY_TORCH_CUDA)
  if (device.is_cuda()) {
    const c10::cuda::CUDAGuard guard(device);
    return body(current_cuda_backend(device));
  }
#endif
  if (!device.is_cpu()) alloy::fail(error_code::invalid_argument, "regularizer: no alloy backend for ", device.str());
  return body(cpu_backend{});
}

inline bool has_backend(::torch::Device device) {
#if defined(ALLOY_TORCH_CUDA)
  if (device.is_cuda()) return true;
#endif
  return device.is_cpu();
}

struct closed_form_penalty : ::torch::autograd::Function<closed_form_penalty> {
  static ::torch::Tensor forward(::torch::autograd::AutogradContext* context, const ::torch::Tensor& task,
                                 const std::string& name, const alignment_target& target, const closed_form& penalty) {
    // Where the closed form runs: on the target's device when the parameter is there too and that
    // device has an alloy backend; otherwise on the host.
    const ::torch::Device device =
        task.device() == target.device() && has_backend(target.device()) ? target.device() : ::torch::Device(::torch::kCPU);
    const bool on_target = device == target.device();
    const auto place = [&](const ::torch::Tensor& tensor) {
      return tensor.to(device, ::torch::kFloat32).contiguous();
    };
    penalty_inputs in;
    in.g = on_target ? target.global(name) : place(target.global(name));
    const ::torch::Tensor values = task.detach();
    const auto type = dtype_of(values);
    const bool viewable = values.device() == device && values.is_contiguous() && type && is_mergeable(*type);
    in.t = viewable ? values : place(values);
    if (target.has_initial()) in.g0 = on_target ? target.initial(name) : place(target.initial(name));
    in.mask = on_target ? target.mask_words(name) : target.masks().find(name)->second.words();
    ::torch::Tensor gradient = ::torch::zeros(values.sizes(), ::torch::TensorOptions().dtype(::torch::kFloat32).device(device));
    const double value = penalty(in, view_in_place(name, gradient));
    context->save_for_backward({gradient});
    context->saved_data["dtype"] = static_cast<std::int64_t>(task.scalar_type());
    context->saved_data["device"] = task.device();
    return ::torch::tensor(value, ::torch::TensorOptions().dtype(::torch::kFloat32)).to(device);
  }

  static ::torch::autograd::variable_list backward(::torch::autograd::AutogradContext* context,
                                                   ::torch::autograd::variable_list outputs) {
    const auto saved = context->get_saved_variables();
    const auto type = static_cast<::torch::ScalarType>(context->saved_data["dtype"].toInt());
    const ::torch::Device device = context->saved_data["device"].toDevice();
    return {(outputs[0] * saved[0]).to(device, type), ::torch::Tensor(), ::torch::Tensor(), ::torch::Tensor()};
  }
};

// Sums penalty(name) over every target tensor; T is the module's parameter, with autograd.
template <class Penalty>
::torch::Tensor sum_over_target(const char* what, const ::torch::nn::Module& module, const alignment_target& target,
                                Penalty&& penalty) {
  const auto parameters = module.named_parameters(/*recurse=*/true);
  ::torch::Tensor total = ::torch::zeros({}, ::torch::TensorOptions().dtype(::torch::kFloat32).device(target.device()));
  for (const auto& name : target.names()) {
    const ::torch::Tensor* found = parameters.find(name);
    if (found == nullptr) {
      alloy::fail(error_code::not_found, what, ": the module has no parameter named ", alloy::quoted{name});
    }
    if (!(shape_of(*found) == shape_of(target.global(name)))) {
      alloy::fail(error_code::shape_mismatch, what, ": tensor ", alloy::quoted{name}, " has shape ",
                          shape_of(*found), " in the module but ", shape_of(target.global(name)), " in G");
    }
    total = total + closed_form_penalty::apply(*found, name, target, closed_form(penalty(name))).to(target.device());
  }
  return total;
}

}  // namespace detail

// (strength / 2) sum (T - G)^2, over every entry or only G's top-p entries.
inline ::torch::Tensor l2_pull(const ::torch::nn::Module& module, const alignment_target& target, double strength,
                               bool top_only = false) {
  return detail::sum_over_target("l2_pull", module, target, [&](const std::string& name) {
    return [&, name](const detail::penalty_inputs& in, tensor_view gradient) {
      return detail::with_backend(in.t.device(), [&](const auto& backend) {
        return l2_pull_tensor(backend, detail::view_in_place(name, in.g), detail::view_in_place(name, in.t), gradient, strength,
                              top_only ? in.mask : nullptr);
      });
    };
  });
}

// strength sum over G's top-p entries of max(0, -sign(G) T): zero while T keeps G's sign.
inline ::torch::Tensor sign_agreement(const ::torch::nn::Module& module, const alignment_target& target,
                                      double strength) {
  return detail::sum_over_target("sign_agreement", module, target, [&](const std::string& name) {
    return [&, name](const detail::penalty_inputs& in, tensor_view gradient) {
      return detail::with_backend(in.t.device(), [&](const auto& backend) {
        return sign_agreement_tensor(backend, detail::view_in_place(name, in.g), detail::view_in_place(name, in.t), gradient,
                                     strength, in.mask);
      });
    };
  });
}

// strength (1 - cos(T - G0, G - G0)) per tensor, summed; tensors where either update is zero
// contribute nothing (the angle is undefined). Needs target.set_initial(G0).
inline ::torch::Tensor cosine_alignment(const ::torch::nn::Module& module, const alignment_target& target,
                                        double strength) {
  if (!target.has_initial()) {
    alloy::fail(error_code::invalid_argument, "cosine_alignment: the alignment target has no G0 (set_initial)");
  }
  return detail::sum_over_target("cosine_alignment", module, target, [&](const std::string& name) {
    return [&, name](const detail::penalty_inputs& in, tensor_view gradient) {
      return detail::with_backend(in.t.device(), [&](const auto& backend) {
        return cosine_alignment_tensor(backend, detail::view_in_place(name, in.g), detail::view_in_place(name, in.t),
                                       detail::view_in_place(name, in.g0), gradient, strength);
      });
    };
  });
}

}  // namespace alloy::torch_adapter
