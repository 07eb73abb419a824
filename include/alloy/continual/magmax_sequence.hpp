#pragma once
// MagMax as its paper runs it over a sequence (Marczak et al., 2024; fusion_bench's
// `method/magmax`): after task t, G = G0 + lambda * tau_max, where tau_max holds, entry by entry,
// the task vector T_i - G0 of largest magnitude over every task seen so far (a later task wins a
// tie, as fusion_bench's `>=`), and lambda is a constant (fusion_bench's scaling_factor 0.5), not
// a function of t. The running selection is kept exactly (in double precision, beside G), so that
// task t's merge equals the one-shot MagMax over the first t task vectors.
// (continual_rule::policy with MagMax is the two-input form: G's and T's task vectors only.)

#include <cmath>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "alloy/continual/subspace.hpp"
#include "alloy/core/error.hpp"
#include "alloy/store/memory_store.hpp"

namespace alloy {

struct magmax_sequence_options {
  double scaling_factor = 0.5;  // lambda (fusion_bench's default)
};

class magmax_sequence_merger {
 public:
  explicit magmax_sequence_merger(memory_store initial, magmax_sequence_options settings = {})
      : initial_(std::move(initial)), global_(initial_), options_(settings) {
    if (!std::isfinite(options_.scaling_factor)) {
      fail(error_code::invalid_argument, "magmax_sequence: scaling_factor = ", options_.scaling_factor, " must be finite");
    }
    detail::check_same_tensors(initial_, initial_, "magmax_sequence: the initial weights");  // (computable dtypes)
    for (const auto& name : initial_.names()) selected_.push_back(std::vector<double>(initial_.view(name).numel(), 0.0));
  }

  // Continues a run: the selection after `tasks_done` tasks (`selection()`), from which G follows.
  static magmax_sequence_merger resume(memory_store initial, std::vector<std::vector<double>> selection, std::size_t tasks_done,
                                       magmax_sequence_options settings = {}) {
    magmax_sequence_merger merger(std::move(initial), settings);
    if (selection.size() != merger.selected_.size()) {
      fail(error_code::shape_mismatch, "magmax_sequence::resume: ", selection.size(), " selected tensors for ",
           merger.selected_.size(), " initial ones");
    }
    for (std::size_t i = 0; i < selection.size(); ++i) {
      if (selection[i].size() != merger.selected_[i].size()) {
        fail(error_code::shape_mismatch, "magmax_sequence::resume: tensor ", quoted{merger.initial_.names()[i]}, " has ",
             selection[i].size(), " selected entries for ", merger.selected_[i].size());
      }
    }
    merger.selected_ = std::move(selection);
    merger.tasks_ = tasks_done;
    merger.store_global();
    return merger;
  }

  [[nodiscard]] memory_store begin_task() const { return global_; }

  // Folds T's task vector into the selection and sets G; T is checked before anything changes.
  template <parameter_store Task>
  void end_task(const Task& task) {
    detail::check_same_tensors(initial_, task, "magmax_sequence: the task weights");
    const auto& names = initial_.names();
    std::vector<std::vector<double>> next = selected_;
    for (std::size_t i = 0; i < names.size(); ++i) {
      const std::vector<double> base = detail::to_doubles(initial_.view(names[i]));
      const std::vector<double> weights = detail::to_doubles(*task.find(names[i]));
      for (std::size_t e = 0; e < base.size(); ++e) {
        const double tau = weights[e] - base[e];
        if (tasks_ == 0 || std::abs(tau) >= std::abs(next[i][e])) next[i][e] = tau;
      }
    }
    selected_ = std::move(next);
    ++tasks_;
    store_global();
  }

  [[nodiscard]] const memory_store& global() const noexcept { return global_; }
  [[nodiscard]] const memory_store& initial() const noexcept { return initial_; }
  [[nodiscard]] std::size_t tasks() const noexcept { return tasks_; }
  // tau_max per tensor of G0, in G0's order: what a checkpoint keeps besides the task count.
  [[nodiscard]] const std::vector<std::vector<double>>& selection() const noexcept { return selected_; }

 private:
  void store_global() {
    const auto& names = initial_.names();
    for (std::size_t i = 0; i < names.size(); ++i) {
      detail::store_offset(global_.mutable_view(names[i]), detail::to_doubles(initial_.view(names[i])), selected_[i],
                           tasks_ == 0 ? 0.0 : options_.scaling_factor);
    }
  }

  memory_store initial_;
  memory_store global_;
  magmax_sequence_options options_;
  std::vector<std::vector<double>> selected_;
  std::size_t tasks_ = 0;
};

}  // namespace alloy
