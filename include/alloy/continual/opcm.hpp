#pragma once
// OPCM, continual merging by orthogonal projection (Tang et al., "Merging Models on the Fly
// Without Retraining", 2025), as fusion_bench's `method/opcm` runs it on CLIP-ViT task sequences.
//
// One merged model G evolves from the pretrained weights G0. Task 1: G = T_1. Task t >= 2, with
// Delta = G - G0 (the merged task vector so far) and tau = T_t - G0:
//   - every matrix (2-D tensor): U S V^T = svd(Delta) with full U and V; r = the number of leading
//     singular values whose cumulative share of sum(S) stays <= alpha (plain S, not S^2);
//     P = U^T tau V, with its whole diagonal and its leading r x r block set to zero (the new task
//     keeps only what does not interfere with the merged one's leading directions);
//     W = G0 + lambda_{t-1} Delta + U P V^T;
//   - every other tensor (biases, norms, embeddings): W = G0 + lambda_{t-1} Delta + tau;
//   - then the whole model is rescaled about G0 so that the norm of its task vector (one norm
//     over every tensor) equals the mean of the norms of the task vectors seen so far:
//     G = G0 + (W - G0) * mean_norm / |W - G0|, and lambda_t = |W - G0| / mean_norm.
// lambda_{t-1} Delta is the unscaled sum of the projected task vectors, so each task's update is
// added at its own size and only the sum is rescaled.
//
// The singular value decompositions come from the caller (the `svd_solver` concept: Eigen's on
// the CPU, alloy/eigen/svd.hpp; torch's, on any of its devices, alloy/torch/svd.hpp); everything
// else runs in double precision on the host, rows in parallel on the cpu_backend, and is rounded
// once into G's dtype. Memory: G, G0, one matrix's factors.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "alloy/continual/subspace.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/store/memory_store.hpp"

namespace alloy {

struct opcm_options {
  double alpha = 0.5;  // the share of the merged task vector's singular mass protected (fusion_bench: 0.5)
};

namespace detail {

// The number of leading singular values whose cumulative share of their sum is <= alpha: the
// directions OPCM protects (the one that crosses alpha is not protected; none when all are 0).
inline std::size_t protected_rank(std::span<const double> singular_values, double alpha) {
  double total = 0;
  for (const double s : singular_values) total += s;
  if (!(total > 0)) return 0;
  double sum = 0;
  for (std::size_t i = 0; i < singular_values.size(); ++i) {
    sum += singular_values[i];
    if (sum / total > alpha) return i;
  }
  return 0;  // (no share above alpha: alpha >= 1, refused by the merger)
}

}  // namespace detail

// The task update OPCM adds for one matrix: U P V^T, where P = U^T tau V with its diagonal and
// leading r x r block cleared, U S V^T = svd(merged), r = protected_rank(S, alpha).
template <svd_solver Solver>
std::vector<double> opcm_projected_update(const cpu_backend& backend, const Solver& solver, std::span<const double> merged,
                                          std::span<const double> update, std::size_t rows, std::size_t cols, double alpha) {
  const svd_factors factors = detail::checked_svd(solver, merged, rows, cols, "opcm");
  const std::size_t r = detail::protected_rank(factors.singular_values, alpha);
  std::vector<double> left(rows * cols), projected(rows * cols), back(rows * cols), result(rows * cols);
  detail::multiply(backend, factors.u, /*transpose_a=*/true, update, false, rows, rows, cols, left);  // U^T tau
  detail::multiply(backend, left, false, factors.v, false, rows, cols, cols, projected);            // (U^T tau) V
  for (std::size_t i = 0; i < std::min(rows, cols); ++i) projected[i * cols + i] = 0;
  for (std::size_t i = 0; i < r; ++i) std::fill_n(projected.begin() + static_cast<std::ptrdiff_t>(i * cols), r, 0.0);
  detail::multiply(backend, factors.u, false, projected, false, rows, rows, cols, back);        // U P
  detail::multiply(backend, back, false, factors.v, /*transpose_b=*/true, rows, cols, cols, result);  // (U P) V^T
  return result;
}

class opcm_merger {
 public:
  // Starts from the pretrained weights G0 (the merged model before any task).
  explicit opcm_merger(memory_store initial, opcm_options settings = {})
      : initial_(std::move(initial)), global_(initial_), options_(settings) {
    if (!(options_.alpha >= 0.0 && options_.alpha < 1.0)) {
      fail(error_code::invalid_argument, "opcm: alpha = ", options_.alpha, " must be in [0, 1)");
    }
    detail::check_same_tensors(initial_, initial_, "opcm: the initial weights");  // (computable dtypes)
  }

  // Continues a run from a checkpoint: G after `tasks_done` tasks, the task-vector norms seen so
  // far (`task_norms()`) and the last scale (`scale()`). The next task then gives what the
  // uninterrupted run would have given.
  static opcm_merger resume(memory_store initial, memory_store global, std::vector<double> task_norms, double scale,
                            opcm_options settings = {}) {
    opcm_merger merger(std::move(initial), settings);
    detail::check_same_tensors(merger.initial_, global, "opcm::resume: the merged weights");
    if (!(scale > 0 && std::isfinite(scale))) fail(error_code::invalid_argument, "opcm::resume: scale ", scale, " must be positive");
    merger.global_ = std::move(global);
    merger.norms_ = std::move(task_norms);
    merger.scale_ = scale;
    return merger;
  }

  // A fresh copy of G for the next task to fine-tune.
  [[nodiscard]] memory_store begin_task() const { return global_; }

  // Merges the fine-tuned weights T of the next task into G. T must hold every tensor of G0 with
  // its shape; checked before G is touched, so a refused task leaves the merger as it was.
  template <svd_solver Solver, parameter_store Task>
  void end_task(const cpu_backend& backend, const Solver& solver, const Task& task) {
    detail::check_same_tensors(initial_, task, "opcm: the task weights");
    const auto& names = initial_.names();
    std::vector<std::vector<double>> base(names.size()), merged(names.size()), update(names.size());
    double squared_norm = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
      base[i] = detail::to_doubles(initial_.view(names[i]));
      update[i] = detail::to_doubles(*task.find(names[i]));
      for (std::size_t k = 0; k < base[i].size(); ++k) {
        update[i][k] -= base[i][k];
        squared_norm += update[i][k] * update[i][k];
      }
    }
    norms_.push_back(std::sqrt(squared_norm));
    if (norms_.size() == 1) {  // task 1: G = T
      for (std::size_t i = 0; i < names.size(); ++i) detail::store_offset(global_.mutable_view(names[i]), base[i], update[i], 1.0);
      scale_ = 1;
      return;
    }
    double mean_norm = 0;
    for (const double n : norms_) mean_norm += n;
    mean_norm /= static_cast<double>(norms_.size());
    double merged_squared = 0;
    for (std::size_t i = 0; i < names.size(); ++i) {
      std::vector<double> sum = detail::to_doubles(global_.view(names[i]));
      for (std::size_t k = 0; k < sum.size(); ++k) sum[k] -= base[i][k];
      const shape dims = initial_.view(names[i]).shape();
      std::vector<double> added;
      if (dims.rank() == 2 && dims.numel() != 0) {
        added = opcm_projected_update(backend, solver, sum, update[i], static_cast<std::size_t>(dims[0]),
                                      static_cast<std::size_t>(dims[1]), options_.alpha);
      } else {
        added = std::move(update[i]);
      }
      for (std::size_t k = 0; k < sum.size(); ++k) {
        sum[k] = scale_ * sum[k] + added[k];
        merged_squared += sum[k] * sum[k];
      }
      merged[i] = std::move(sum);
    }
    const double merged_norm = std::sqrt(merged_squared);
    // (A zero sum of task vectors stays zero: there is nothing to rescale.)
    const double factor = merged_norm > 0 ? mean_norm / merged_norm : 1.0;
    for (std::size_t i = 0; i < names.size(); ++i) detail::store_offset(global_.mutable_view(names[i]), base[i], merged[i], factor);
    scale_ = merged_norm > 0 && mean_norm > 0 ? merged_norm / mean_norm : 1.0;
  }

  [[nodiscard]] const memory_store& global() const noexcept { return global_; }
  [[nodiscard]] const memory_store& initial() const noexcept { return initial_; }
  [[nodiscard]] std::size_t tasks() const noexcept { return norms_.size(); }
  // The norms of the task vectors T_t - G0 seen so far, and lambda_t: what a checkpoint keeps.
  [[nodiscard]] const std::vector<double>& task_norms() const noexcept { return norms_; }
  [[nodiscard]] double scale() const noexcept { return scale_; }

 private:
  memory_store initial_;
  memory_store global_;
  opcm_options options_;
  std::vector<double> norms_;
  double scale_ = 1;
};

}  // namespace alloy
