#pragma once
// Continual learning by merging (Sokar et al., 2025): one global set of weights G evolves over a
// sequence of tasks. For each task, `begin_task()` hands out a copy T of G to fine-tune on that
// task alone; `end_task(T)` merges T back into G. Memory stays constant in the number of tasks:
// G, the initial weights G0 (for task-vector policies) and the copy handed out.
//
// Merge rules:
//   running_mean (default): G_t = ((t - 1) G_{t-1} + T_t) / t, and G_1 = T_1: every task counts
//                           equally, however many came before (the paper's average over tasks).
//   fixed_weight:           G = (1 - a) G + a T (a = 0.5 is the paper's "average of G and T").
//   policy:                 any task-vector policy (TIES, MagMax, ...) over the task vectors of G
//                           and T relative to G0, weighted (t - 1) / t and 1 / t.

#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/merge/linear_merge.hpp"
#include "alloy/merge/merge_inputs.hpp"
#include "alloy/merge/registry.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

enum class continual_rule : std::uint8_t { running_mean, fixed_weight, policy };

struct continual_options {
  continual_rule merge_rule = continual_rule::running_mean;
  double fixed_weight = 0.5;          // weight of T for continual_rule::fixed_weight
  std::optional<merge_policy> policy;  // for continual_rule::policy (task vectors from G0)
  // The per-model parameters the policy sees for G and for T (density for TIES, ...); their
  // weights are the rule's, (t - 1) / t and 1 / t.
  model_parameters policy_parameters{};
};

class continual_merger {
 public:
  using rule = continual_rule;
  using options = continual_options;

  explicit continual_merger(memory_store initial, options settings = {})
      : global_(std::move(initial)), options_(std::move(settings)) {
    if (options_.merge_rule == rule::fixed_weight &&
        !(options_.fixed_weight >= 0.0 && options_.fixed_weight <= 1.0)) {
      detail::fail(error_code::invalid_argument, "continual_merger: fixed weight ", options_.fixed_weight,
                   " must be in [0, 1]");
    }
    if (options_.merge_rule == rule::policy) {
      if (!options_.policy) detail::fail(error_code::invalid_argument, "continual_merger: rule::policy needs a policy");
      // Checked once here, so that no task can be refused halfway through G for its parameters.
      const model_parameters& p = options_.policy_parameters;
      for (const auto& [parameter, value] : {std::pair{"density", p.density}, std::pair{"gamma", p.gamma},
                                             std::pair{"epsilon", p.epsilon}}) {
        if (!(value >= 0.0 && value <= 1.0)) {
          detail::fail(error_code::invalid_argument, "continual_merger: policy parameter ", parameter, " = ", value,
                       " must be in [0, 1]");
        }
      }
      initial_ = global_;
    }
  }

  // Continues a run from a checkpoint: G after `tasks_done` tasks and, for rule::policy, the
  // initial weights G0 the task vectors are taken from. Merging the next task then gives what
  // the uninterrupted run would have given.
  static continual_merger resume(memory_store global, std::size_t tasks_done, options settings,
                                 std::optional<memory_store> initial = std::nullopt) {
    const bool policy = settings.merge_rule == rule::policy;
    if (policy && !initial) {
      detail::fail(error_code::invalid_argument, "continual_merger::resume: rule::policy needs the initial weights G0");
    }
    continual_merger merger(policy ? *initial : global, std::move(settings));
    if (policy) {
      for (const auto& name : merger.initial_->names()) {
        const auto found = global.find(name);
        if (!found) detail::fail(error_code::not_found, "continual_merger::resume: G lacks tensor ", detail::quoted{name}, " of G0");
        if (!(found->shape() == merger.initial_->view(name).shape())) {
          detail::fail(error_code::shape_mismatch, "continual_merger::resume: tensor ", detail::quoted{name},
                       " has shape ", found->shape(), " in G but ", merger.initial_->view(name).shape(), " in G0");
        }
      }
      merger.global_ = std::move(global);
    }
    merger.tasks_ = tasks_done;
    return merger;
  }

  // The initial weights G0 (rule::policy only; empty otherwise).
  [[nodiscard]] const std::optional<memory_store>& initial() const noexcept { return initial_; }

  // A fresh copy of G for the next task to fine-tune.
  [[nodiscard]] memory_store begin_task() const { return global_; }

  // Merges the fine-tuned task weights into G on `backend`. T must hold every tensor of G, same
  // shapes, computable dtypes; all of that is checked before G is touched, so a refused task
  // leaves G and the task count as they were.
  template <class Backend, parameter_store Task>
  void end_task(const Backend& backend, const Task& task) {
    std::vector<std::pair<tensor_view, const_tensor_view>> pairs;  // G's tensor, T's tensor
    for (const auto& name : global_.names()) {
      const auto found = task.find(name);
      if (!found) detail::fail(error_code::not_found, "continual_merger: the task weights lack tensor ", detail::quoted{name});
      const tensor_view g = global_.mutable_view(name);
      if (!(found->shape() == g.shape())) {
        detail::fail(error_code::shape_mismatch, "continual_merger: tensor ", detail::quoted{name}, " has shape ",
                     found->shape(), " in the task weights but ", g.shape(), " in the global weights");
      }
      detail::check_computable(*found, "continual_merger: tensor '" + name + "' of the task weights");
      pairs.emplace_back(g, *found);
    }
    const std::size_t tasks = tasks_ + 1;
    const double t = static_cast<double>(tasks);
    const auto& names = global_.names();
    for (std::size_t i = 0; i < pairs.size(); ++i) {
      const auto& [g, task_tensor] = pairs[i];
      const std::string& name = names[i];
      if (tasks == 1 && options_.merge_rule != rule::fixed_weight) {
        const const_tensor_view only[] = {task_tensor};
        const model_parameters one[] = {{}};
        linear_merge{true}.merge(backend, merge_inputs{name, std::nullopt, only, one}, g);
        continue;
      }
      const const_tensor_view both[] = {g, task_tensor};
      switch (options_.merge_rule) {
        case rule::running_mean: {
          const model_parameters weights[] = {{(t - 1) / t}, {1 / t}};
          linear_merge{true}.merge(backend, merge_inputs{name, std::nullopt, both, weights}, g);
          break;
        }
        case rule::fixed_weight: {
          const model_parameters weights[] = {{1 - options_.fixed_weight}, {options_.fixed_weight}};
          linear_merge{true}.merge(backend, merge_inputs{name, std::nullopt, both, weights}, g);
          break;
        }
        case rule::policy: {
          model_parameters weights[] = {options_.policy_parameters, options_.policy_parameters};
          weights[0].weight = (t - 1) / t;
          weights[1].weight = 1 / t;
          merge_with(*options_.policy, backend, merge_inputs{name, initial_->view(name), both, weights}, g);
          break;
        }
      }
    }
    tasks_ = tasks;
  }

  [[nodiscard]] const memory_store& global() const noexcept { return global_; }
  [[nodiscard]] std::size_t tasks() const noexcept { return tasks_; }

 private:
  memory_store global_;
  std::optional<memory_store> initial_;
  options options_;
  std::size_t tasks_ = 0;
};

}  // namespace alloy
