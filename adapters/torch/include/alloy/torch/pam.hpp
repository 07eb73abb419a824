#pragma once
// PAM in a LibTorch training loop:
//
//   alloy::torch_adapter::pam_aligner aligner({.p = 0.5, .every = 10});
//   aligner.set_global(merger.global(), device);       // once per task: G and its top-p masks
//   for (...) { loss.backward(); optimizer.step(); aligner.step(*model, optimizer); }
//
// Every K-th step, the module's parameters are reset where their sign opposes G's inside G's
// top-p masks (to zero or to G), and so is the optimizer's state at those entries: Adam's and
// AdamW's moments (and max_exp_avg_sq), SGD's momentum buffer, RMSprop's square average, momentum
// and gradient average. A reset weight should not keep the momentum that pushed it across zero,
// nor a second moment that scales its next step; Adagrad's accumulated sum holds no direction and
// is kept. An optimizer whose state alloy does not know is refused by name before anything is
// reset.
//
// One PAM (alloy::reset_sign_conflicts) on the parameters' own memory, by the backend of their
// device: alloy's CPU backend for contiguous CPU parameters; alloy's CUDA backend on torch's
// current stream for contiguous CUDA parameters (ALLOY_TORCH_CUDA builds: no f32 copies, one wait
// per pass for the counts). Anything else is staged through host memory: copied out, aligned on
// the CPU, copied back.

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>

#include "alloy/align/pam.hpp"
#include "alloy/core/error.hpp"
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

// The optimizer's state for one parameter, or nullptr before its first step. LibTorch keys the
// state by the parameter's TensorImpl: as a pointer in newer releases, as its printed address
// (c10::guts::to_string) in older ones.
template <class States>
typename States::key_type state_key(const States&, const c10::TensorImpl* impl) {
  using key_type = typename States::key_type;
  if constexpr (std::is_same_v<key_type, std::string>) {
    std::ostringstream text;
    text << impl;
    return text.str();
  } else {
    return static_cast<key_type>(const_cast<c10::TensorImpl*>(impl));
  }
}

inline ::torch::optim::OptimizerParamState* optimizer_state(::torch::optim::Optimizer& optimizer,
                                                             const ::torch::Tensor& parameter) {
  auto& states = optimizer.state();
  const auto it = states.find(state_key(states, parameter.unsafeGetTensorImpl()));
  return it == states.end() ? nullptr : it->second.get();
}

inline void zero_where(const ::torch::Tensor& state, const ::torch::Tensor& mask) {
  if (state.defined()) state.masked_fill_(mask, 0);
}

}  // namespace detail

// Zeroes the optimizer's per-entry state of `parameter` where `mask` (bool, same shape) is set.
inline void reset_optimizer_state(::torch::optim::Optimizer& optimizer, const ::torch::Tensor& parameter,
                                  const ::torch::Tensor& mask, std::string_view name = "") {
  namespace optim = ::torch::optim;
  ::torch::optim::OptimizerParamState* state = detail::optimizer_state(optimizer, parameter);
  if (state == nullptr) return;  // no step taken yet: nothing to reset
  ::torch::NoGradGuard no_grad;
  if (auto* adam = dynamic_cast<optim::AdamParamState*>(state)) {
    detail::zero_where(adam->exp_avg(), mask);
    detail::zero_where(adam->exp_avg_sq(), mask);
    detail::zero_where(adam->max_exp_avg_sq(), mask);
  } else if (auto* adamw = dynamic_cast<optim::AdamWParamState*>(state)) {
    detail::zero_where(adamw->exp_avg(), mask);
    detail::zero_where(adamw->exp_avg_sq(), mask);
    detail::zero_where(adamw->max_exp_avg_sq(), mask);
  } else if (auto* sgd = dynamic_cast<optim::SGDParamState*>(state)) {
    detail::zero_where(sgd->momentum_buffer(), mask);
  } else if (auto* rmsprop = dynamic_cast<optim::RMSpropParamState*>(state)) {
    detail::zero_where(rmsprop->square_avg(), mask);
    detail::zero_where(rmsprop->momentum_buffer(), mask);
    detail::zero_where(rmsprop->grad_avg(), mask);
  } else if (dynamic_cast<optim::AdagradParamState*>(state) == nullptr) {
    alloy::fail(error_code::invalid_argument, "pam: cannot reset the optimizer state of parameter ",
                        alloy::quoted{name}, " (", typeid(*state).name(),
                        "); alloy knows Adam, AdamW, SGD, RMSprop and Adagrad. Align without the optimizer to skip it");
  }
}

namespace detail {

// Refuses, before anything is reset, an optimizer whose per-parameter state alloy cannot reset.
inline void check_optimizer_state(::torch::optim::Optimizer& optimizer, const ::torch::Tensor& parameter,
                                  std::string_view name) {
  namespace optim = ::torch::optim;
  const optim::OptimizerParamState* state = optimizer_state(optimizer, parameter);
  if (state == nullptr || dynamic_cast<const optim::AdamParamState*>(state) != nullptr ||
      dynamic_cast<const optim::AdamWParamState*>(state) != nullptr ||
      dynamic_cast<const optim::SGDParamState*>(state) != nullptr ||
      dynamic_cast<const optim::RMSpropParamState*>(state) != nullptr ||
      dynamic_cast<const optim::AdagradParamState*>(state) != nullptr) {
    return;
  }
  reset_optimizer_state(optimizer, parameter, ::torch::Tensor(), name);  // throws, naming the state
}

// The module's parameters that the target aligns, checked by name and shape.
inline std::vector<std::pair<std::string, ::torch::Tensor>> aligned_parameters(::torch::nn::Module& module,
                                                                               const alignment_target& target) {
  const auto parameters = module.named_parameters(/*recurse=*/true);
  std::vector<std::pair<std::string, ::torch::Tensor>> aligned;
  for (const auto& name : target.names()) {
    const ::torch::Tensor* found = parameters.find(name);
    if (found == nullptr) {
      alloy::fail(error_code::not_found, "pam: the module has no parameter named ", alloy::quoted{name});
    }
    if (!(shape_of(*found) == shape_of(target.global(name)))) {
      alloy::fail(error_code::shape_mismatch, "pam: tensor ", alloy::quoted{name}, " has shape ",
                          shape_of(*found), " in the module but ", shape_of(target.global(name)), " in the global weights");
    }
    aligned.emplace_back(name, *found);
  }
  return aligned;
}

inline bool viewable_on(const ::torch::Tensor& tensor, ::torch::Device device) {
  return tensor.device() == device && tensor.is_contiguous() && dtype_of(tensor).has_value() &&
         is_mergeable(*dtype_of(tensor));
}

}  // namespace detail

class pam_aligner {
 public:
  explicit pam_aligner(pam_options options = {}) : core_(options) {}

  // G for the task that starts now (any alloy store, e.g. continual_merger::global()), placed on
  // the device the module trains on, with its top-p masks (selected on the host by `host`).
  template <parameter_store Global>
  void set_global(const Global& global, ::torch::Device device = ::torch::kCPU, const cpu_backend& host = {}) {
    core_.set_global(host, global);
    target_.emplace(global, core_.top_masks(), device);
  }

  // Call after optimizer.step(): counts the step and aligns on every K-th (the report is empty on
  // the others), resetting the optimizer's state where it resets weights.
  pam_report step(::torch::nn::Module& module, ::torch::optim::Optimizer& optimizer) {
    if (!core_.step()) return {};
    return align(module, &optimizer);
  }

  // One alignment pass now; the optimizer's state is reset too when one is given.
  pam_report align(::torch::nn::Module& module, ::torch::optim::Optimizer* optimizer = nullptr) const {
    const alignment_target& g = target();
    ::torch::NoGradGuard no_grad;
    const auto parameters = detail::aligned_parameters(module, g);
    if (optimizer != nullptr) {
      for (const auto& [name, parameter] : parameters) detail::check_optimizer_state(*optimizer, parameter, name);
    }
    const bool in_place = std::all_of(parameters.begin(), parameters.end(),
                                      [&](const auto& p) { return detail::viewable_on(p.second, g.device()); });
    const auto reset_state = [&](const std::string& name, const ::torch::Tensor& parameter, const ::torch::Tensor& mask) {
      if (optimizer != nullptr) reset_optimizer_state(*optimizer, parameter, mask, name);
    };
    if (in_place && g.device().is_cpu()) {
      const tensor_store global = g.global_store();
      tensor_store task(parameters);
      return align_signs(cpu_backend{}, global, task, g.masks(), core_.options().reset,
                         [&](std::string_view name, const bit_mask& reset) {
                           const ::torch::Tensor& parameter = task.tensor(name);
                           reset_state(std::string(name), parameter, to_bool_tensor(reset, parameter.sizes()));
                         });
    }
#if defined(ALLOY_TORCH_CUDA)
    if (in_place && g.device().is_cuda()) return align_on_gpu(g, parameters, reset_state);
#endif
    // Staged: the parameters and G in host memory, aligned there, the parameters written back.
    std::vector<std::pair<std::string, ::torch::Tensor>> host_task, host_global;
    for (const auto& [name, parameter] : parameters) {
      host_task.emplace_back(name, parameter.to(::torch::kCPU, ::torch::kFloat32, false, true).contiguous());
      host_global.emplace_back(name, g.global(name).to(::torch::kCPU).contiguous());
    }
    tensor_store task(host_task);
    const pam_report report = align_signs(cpu_backend{}, tensor_store(host_global), task, g.masks(), core_.options().reset,
                                          [&](std::string_view name, const bit_mask& reset) {
                                            const auto& [key, parameter] = *std::find_if(
                                                parameters.begin(), parameters.end(), [&](const auto& p) { return p.first == name; });
                                            reset_state(key, parameter, to_bool_tensor(reset, parameter.sizes(), parameter.device()));
                                          });
    for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i].second.copy_(host_task[i].second);
    return report;
  }

  [[nodiscard]] const alignment_target& target() const {
    if (!target_) alloy::fail(error_code::invalid_argument, "pam: set_global was not called for this task");
    return *target_;
  }
  [[nodiscard]] const pam_options& options() const noexcept { return core_.options(); }
  [[nodiscard]] std::size_t steps() const noexcept { return core_.steps(); }

 private:
#if defined(ALLOY_TORCH_CUDA)
  template <class ResetState>
  pam_report align_on_gpu(const alignment_target& g, const std::vector<std::pair<std::string, ::torch::Tensor>>& parameters,
                          const ResetState& reset_state) const {
    const c10::cuda::CUDAGuard guard(g.device());
    const cuda::backend& gpu = detail::current_cuda_backend(g.device());
    std::vector<pam_tensor> tensors;
    std::size_t considered = 0;
    for (const auto& [name, parameter] : parameters) {
      const ::torch::Tensor& global = g.global(name);
      tensors.push_back({const_tensor_view(static_cast<const std::byte*>(global.data_ptr()), dtype::f32, shape_of(global)),
                         tensor_view(static_cast<std::byte*>(parameter.data_ptr()), *dtype_of(parameter), shape_of(parameter)),
                         g.mask_words(name)});
      considered += g.masks().find(name)->second.count();
    }
    std::vector<std::size_t> counts(tensors.size());
    const std::vector<cuda::device_mask> resets =
        cuda::reset_sign_conflicts(gpu, std::span<const pam_tensor>(tensors), core_.options().reset, std::span(counts));
    pam_report report;
    report.total_considered = considered;
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      const auto& [name, parameter] = parameters[i];
      report.reset_per_tensor.emplace(name, counts[i]);
      report.total_reset += counts[i];
      if (counts[i] == 0) continue;
      ::torch::Tensor mask = ::torch::empty(parameter.sizes(), parameter.options().dtype(::torch::kBool));
      cuda::expand_mask(gpu, resets[i], reinterpret_cast<std::uint8_t*>(mask.data_ptr<bool>()));
      reset_state(name, parameter, mask);
    }
    return report;
  }
#endif

  alloy::pam_aligner<> core_;
  std::optional<alignment_target> target_;
};

}  // namespace alloy::torch_adapter
