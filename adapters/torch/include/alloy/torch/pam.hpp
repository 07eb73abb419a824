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
// is kept. An optimizer whose state alloy does not know is refused by name rather than left
// half-reset.
//
// Engines: on CPU, alloy's own kernels run on the parameters' memory (zero-copy, as the core
// aligner); on other devices (CUDA), the same rule runs as torch operations until alloy's CUDA
// backend takes over. Both give the same resets (a test compares them on CPU).

#include <torch/torch.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>

#include "alloy/align/pam.hpp"
#include "alloy/core/error.hpp"
#include "alloy/torch/alignment_target.hpp"
#include "alloy/torch/tensor_store.hpp"

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
    alloy::detail::fail(error_code::invalid_argument, "pam: cannot reset the optimizer state of parameter ",
                        alloy::detail::quoted{name}, " (", typeid(*state).name(),
                        "); alloy knows Adam, AdamW, SGD, RMSprop and Adagrad. Align without the optimizer to skip it");
  }
}

// One alignment pass with torch operations, on any device: the rule of alloy::align_signs.
inline pam_report align_signs_torch(::torch::nn::Module& module, const alignment_target& target, pam_reset mode,
                                    ::torch::optim::Optimizer* optimizer = nullptr) {
  ::torch::NoGradGuard no_grad;
  pam_report report;
  const auto parameters = module.named_parameters(/*recurse=*/true);
  for (const auto& name : target.names()) {
    const ::torch::Tensor* found = parameters.find(name);
    if (found == nullptr) {
      alloy::detail::fail(error_code::not_found, "pam: the module has no parameter named ", alloy::detail::quoted{name});
    }
    const ::torch::Tensor t = found->detach();  // shares the parameter's storage
    const ::torch::Tensor& g = target.global(name);
    if (!(shape_of(t) == shape_of(g))) {
      alloy::detail::fail(error_code::shape_mismatch, "pam: tensor ", alloy::detail::quoted{name}, " has shape ",
                          shape_of(t), " in the module but ", shape_of(g), " in the global weights");
    }
    const ::torch::Tensor& top = target.top(name);
    const ::torch::Tensor tv = t.to(::torch::kFloat32);
    const ::torch::Tensor conflict = top.logical_and(((g > 0).logical_and(tv < 0)).logical_or((g < 0).logical_and(tv > 0)));
    const auto count = static_cast<std::size_t>(conflict.sum().item<std::int64_t>());
    report.reset_per_tensor.emplace(name, count);
    report.total_reset += count;
    report.total_considered += target.masks().find(name)->second.count();
    if (count == 0) continue;
    if (mode == pam_reset::to_zero) {
      t.masked_fill_(conflict, 0);
    } else {
      t.copy_(::torch::where(conflict, g.to(t.scalar_type()), t));
    }
    if (optimizer != nullptr) reset_optimizer_state(*optimizer, *found, conflict, name);
  }
  return report;
}

class pam_aligner {
 public:
  explicit pam_aligner(pam_options options = {}, align_engine engine = align_engine::automatic)
      : core_(options), engine_(engine) {}

  // G for the task that starts now (any alloy store, e.g. continual_merger::global()), placed on
  // the device the module trains on, with its top-p masks.
  template <parameter_store Global>
  void set_global(const Global& global, ::torch::Device device = ::torch::kCPU) {
    core_.set_global(global);
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
    const bool cpu_kernels = engine_ == align_engine::alloy_cpu ||
                             (engine_ == align_engine::automatic && g.device().is_cpu());
    if (!cpu_kernels) return align_signs_torch(module, g, core_.options().reset, optimizer);
    if (!g.device().is_cpu()) {
      alloy::detail::fail(error_code::invalid_argument, "pam: the alloy_cpu engine needs G on the CPU, not on ",
                          g.device().str());
    }
    const tensor_store global = g.global_store();
    tensor_store task = tensor_store::from_module(module);
    return align_signs(core_.options().backend, global, task, g.masks(), core_.options().reset,
                       [&](std::string_view name, const bit_mask& reset) {
                         if (optimizer == nullptr) return;
                         const ::torch::Tensor& parameter = task.tensor(name);
                         reset_optimizer_state(*optimizer, parameter, to_bool_tensor(reset, parameter.sizes()), name);
                       });
  }

  [[nodiscard]] const alignment_target& target() const {
    if (!target_) alloy::detail::fail(error_code::invalid_argument, "pam: set_global was not called for this task");
    return *target_;
  }
  [[nodiscard]] const pam_options& options() const noexcept { return core_.options(); }
  [[nodiscard]] std::size_t steps() const noexcept { return core_.steps(); }

 private:
  alloy::pam_aligner core_;
  align_engine engine_;
  std::optional<alignment_target> target_;
};

}  // namespace alloy::torch_adapter
