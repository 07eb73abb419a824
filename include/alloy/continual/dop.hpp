#pragma once
// DOP, continual merging by dual orthogonal projection (2025), as fusion_bench's `method/dop`
// runs it on CLIP-ViT task sequences.
//
// One merged model G evolves from the pretrained weights G0. Task 1: G = T_1. Task t >= 2, the
// old side being the merged task vector tau_0 = G - G0 and the new one tau_1 = T_t - G0: every
// matrix (2-D tensor) is found by a few optimiser steps from the average X = (tau_0 + tau_1) / 2
// on two projection losses, one per side,
//   L_i(X) = | diag(s_i) U_i^T (X - tau_i) |^2 + | (X - tau_i) V_i diag(s_i) |^2,
// where U_i, s_i, V_i are tau_i's leading singular triplets (the k_i whose cumulative share of
// the singular values stays below `svd_epsilon`): X keeps each side's task vector in that side's
// own input and output subspaces. The two losses are balanced by MGDA (the min-norm combination
// of their gradients, each divided by its loss), smoothed by an exponential moving average that
// starts at (alpha, 1 - alpha); Adam takes the step. Every other tensor is the average of the
// two sides. G = G0 + X; nothing is rescaled.
//
// The gradient of L_i is 2 U_i diag(s_i^2) U_i^T (X - tau_i) + 2 (X - tau_i) V_i diag(s_i^2) V_i^T,
// formed through the k_i kept directions: each step costs 8 m n k_i multiply-adds per side
// (a LoRA factor of rank 8 costs almost nothing), in double precision on the host, rows in
// parallel; one SVD per side and matrix.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "alloy/continual/subspace.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/store/memory_store.hpp"

namespace alloy {

enum class dop_subspace : std::uint8_t { both, input, output };  // fusion_bench's svd_proj_space uv, u, v

struct dop_options {
  double alpha = 0.8;              // the old side's weight: where the moving average starts, or fixed without MGDA
  std::size_t steps = 200;         // Adam steps per matrix and task
  double learning_rate = 1e-4;     // Adam's (betas 0.9, 0.999, eps 1e-8, as torch's defaults)
  double svd_epsilon = 0.99999;    // share of the singular values whose directions each loss keeps
  bool mgda = true;                // balance the two losses by MGDA; else weigh them alpha and 1 - alpha
  bool ema = true;                 // smooth MGDA's weights by a moving average
  double ema_beta = 0.999;
  dop_subspace subspace = dop_subspace::both;  // both: U and V terms; input: U only; output: V only
};

namespace detail {

// The number of leading singular values whose cumulative share of their sum is below epsilon
// (fusion_bench: searchsorted(cumsum(S) / sum(S), epsilon), left side); none when all are 0.
inline std::size_t kept_rank(std::span<const double> singular_values, double epsilon) {
  double total = 0;
  for (const double s : singular_values) total += s;
  if (!(total > 0)) return 0;
  double sum = 0;
  std::size_t k = 0;
  for (const double s : singular_values) {
    sum += s;
    if (!(sum / total < epsilon)) break;
    ++k;
  }
  return k;
}

// A side's leading singular triplets: its first k left (rows x k) and right (cols x k) singular
// vectors, row-major, and the squares of their singular values.
struct kept_subspace {
  std::size_t k = 0;
  std::vector<double> left, right, squared;
};

inline kept_subspace leading_subspace(const svd_factors& f, std::size_t rows, std::size_t cols, std::size_t k) {
  kept_subspace kept{k, std::vector<double>(rows * k), std::vector<double>(cols * k), std::vector<double>(k)};
  for (std::size_t i = 0; i < rows; ++i) std::copy_n(f.u.begin() + static_cast<std::ptrdiff_t>(i * rows), k, kept.left.begin() + static_cast<std::ptrdiff_t>(i * k));
  for (std::size_t j = 0; j < cols; ++j) std::copy_n(f.v.begin() + static_cast<std::ptrdiff_t>(j * cols), k, kept.right.begin() + static_cast<std::ptrdiff_t>(j * k));
  for (std::size_t c = 0; c < k; ++c) kept.squared[c] = f.singular_values[c] * f.singular_values[c];
  return kept;
}

// The min-norm point gamma g0 + (1 - gamma) g1 of two vectors given their inner products
// (Sener and Koltun's MGDA for two tasks, as fusion_bench uses it): gamma.
inline double min_norm_weight(double g00, double g01, double g11) {
  if (g01 >= g00) return 0.999;
  if (g01 >= g11) return 0.001;
  return (g11 - g01) / (g00 + g11 - 2 * g01);
}

}  // namespace detail

// DOP's merged task vector for one rows x cols matrix from the old and new task vectors.
template <svd_solver Solver>
std::vector<double> dop_merged_matrix(const cpu_backend& backend, const Solver& solver, std::span<const double> old_side,
                                      std::span<const double> new_side, std::size_t rows, std::size_t cols,
                                      const dop_options& options) {
  const std::size_t size = rows * cols;
  const std::span<const double> sides[2] = {old_side, new_side};
  detail::kept_subspace kept[2];
  for (int i = 0; i < 2; ++i) {
    const svd_factors f = detail::checked_svd(solver, sides[i], rows, cols, "dop");
    kept[i] = detail::leading_subspace(f, rows, cols, detail::kept_rank(f.singular_values, options.svd_epsilon));
  }
  const bool input_term = options.subspace != dop_subspace::output, output_term = options.subspace != dop_subspace::input;
  std::vector<double> x(size), difference(size), product(size), gradient[2] = {std::vector<double>(size), std::vector<double>(size)};
  for (std::size_t e = 0; e < size; ++e) x[e] = (old_side[e] + new_side[e]) / 2;
  std::vector<double> moment(size, 0.0), second_moment(size, 0.0);
  std::vector<double> narrow(std::max(rows, cols) * std::max(kept[0].k, kept[1].k));  // U^T D or D V
  double weight_old = options.alpha;  // the loss weights, (old, 1 - old)
  constexpr double beta1 = 0.9, beta2 = 0.999, adam_epsilon = 1e-8;
  for (std::size_t step = 1; step <= options.steps; ++step) {
    double loss[2];
    for (int i = 0; i < 2; ++i) {
      const std::size_t k = kept[i].k;
      for (std::size_t e = 0; e < size; ++e) difference[e] = x[e] - sides[i][e];
      std::fill(gradient[i].begin(), gradient[i].end(), 0.0);
      if (input_term && k != 0) {  // 2 U diag(s^2) (U^T D)
        detail::multiply(backend, kept[i].left, /*transpose_a=*/true, difference, false, k, rows, cols, narrow);
        for (std::size_t c = 0; c < k; ++c) {
          for (std::size_t j = 0; j < cols; ++j) narrow[c * cols + j] *= kept[i].squared[c];
        }
        detail::multiply(backend, kept[i].left, false, narrow, false, rows, k, cols, product);
        for (std::size_t e = 0; e < size; ++e) gradient[i][e] += 2 * product[e];
      }
      if (output_term && k != 0) {  // 2 (D V) diag(s^2) V^T
        detail::multiply(backend, difference, false, kept[i].right, false, rows, cols, k, narrow);
        for (std::size_t r = 0; r < rows; ++r) {
          for (std::size_t c = 0; c < k; ++c) narrow[r * k + c] *= kept[i].squared[c];
        }
        detail::multiply(backend, narrow, false, kept[i].right, /*transpose_b=*/true, rows, k, cols, product);
        for (std::size_t e = 0; e < size; ++e) gradient[i][e] += 2 * product[e];
      }
      double inner = 0;  // L_i = <D, U diag(s^2) U^T D> + <D, D V diag(s^2) V^T> = <D, gradient> / 2
      for (std::size_t e = 0; e < size; ++e) inner += difference[e] * gradient[i][e];
      loss[i] = inner / 2;
    }
    if (options.mgda) {
      double g00 = 0, g01 = 0, g11 = 0;  // of the gradients divided by their losses
      const double scale0 = loss[0] > 0 ? 1 / loss[0] : 0, scale1 = loss[1] > 0 ? 1 / loss[1] : 0;
      for (std::size_t e = 0; e < size; ++e) {
        const double a = gradient[0][e] * scale0, b = gradient[1][e] * scale1;
        g00 += a * a;
        g01 += a * b;
        g11 += b * b;
      }
      const double gamma = detail::min_norm_weight(g00, g01, g11);
      weight_old = options.ema ? options.ema_beta * weight_old + (1 - options.ema_beta) * gamma : gamma;
    }
    // (With the moving average, the new side's weight 1 - weight_old follows the same average.)
    const double bias1 = 1 - std::pow(beta1, static_cast<double>(step));
    const double bias2 = 1 - std::pow(beta2, static_cast<double>(step));
    for (std::size_t e = 0; e < size; ++e) {
      const double g = weight_old * gradient[0][e] + (1 - weight_old) * gradient[1][e];
      moment[e] = beta1 * moment[e] + (1 - beta1) * g;
      second_moment[e] = beta2 * second_moment[e] + (1 - beta2) * g * g;
      x[e] -= options.learning_rate / bias1 * moment[e] / (std::sqrt(second_moment[e]) / std::sqrt(bias2) + adam_epsilon);
    }
  }
  return x;
}

class dop_merger {
 public:
  // Starts from the pretrained weights G0 (the merged model before any task).
  explicit dop_merger(memory_store initial, dop_options settings = {})
      : initial_(std::move(initial)), global_(initial_), options_(settings) {
    const auto in_unit = [](double v) { return v >= 0.0 && v <= 1.0; };
    if (!in_unit(options_.alpha)) fail(error_code::invalid_argument, "dop: alpha = ", options_.alpha, " must be in [0, 1]");
    if (!in_unit(options_.ema_beta)) fail(error_code::invalid_argument, "dop: ema_beta = ", options_.ema_beta, " must be in [0, 1]");
    if (!(options_.svd_epsilon > 0.0 && options_.svd_epsilon <= 1.0)) {
      fail(error_code::invalid_argument, "dop: svd_epsilon = ", options_.svd_epsilon, " must be in (0, 1]");
    }
    if (!(options_.learning_rate > 0.0 && std::isfinite(options_.learning_rate))) {
      fail(error_code::invalid_argument, "dop: learning_rate = ", options_.learning_rate, " must be positive");
    }
    detail::check_same_tensors(initial_, initial_, "dop: the initial weights");  // (computable dtypes)
  }

  // Continues a run from a checkpoint: G after `tasks_done` tasks.
  static dop_merger resume(memory_store initial, memory_store global, std::size_t tasks_done, dop_options settings = {}) {
    dop_merger merger(std::move(initial), settings);
    detail::check_same_tensors(merger.initial_, global, "dop::resume: the merged weights");
    merger.global_ = std::move(global);
    merger.tasks_ = tasks_done;
    return merger;
  }

  [[nodiscard]] memory_store begin_task() const { return global_; }

  // Merges the fine-tuned weights T of the next task into G; T is checked before G is touched.
  template <svd_solver Solver, parameter_store Task>
  void end_task(const cpu_backend& backend, const Solver& solver, const Task& task) {
    detail::check_same_tensors(initial_, task, "dop: the task weights");
    const auto& names = initial_.names();
    std::vector<std::vector<double>> base(names.size()), merged(names.size());
    for (std::size_t i = 0; i < names.size(); ++i) {
      base[i] = detail::to_doubles(initial_.view(names[i]));
      std::vector<double> new_side = detail::to_doubles(*task.find(names[i]));
      for (std::size_t e = 0; e < new_side.size(); ++e) new_side[e] -= base[i][e];
      if (tasks_ == 0) {  // task 1: G = T
        merged[i] = std::move(new_side);
        continue;
      }
      std::vector<double> old_side = detail::to_doubles(global_.view(names[i]));
      for (std::size_t e = 0; e < old_side.size(); ++e) old_side[e] -= base[i][e];
      const shape dims = initial_.view(names[i]).shape();
      if (dims.rank() == 2 && dims.numel() != 0) {
        merged[i] = dop_merged_matrix(backend, solver, old_side, new_side, static_cast<std::size_t>(dims[0]),
                                      static_cast<std::size_t>(dims[1]), options_);
      } else {
        for (std::size_t e = 0; e < old_side.size(); ++e) old_side[e] = (old_side[e] + new_side[e]) / 2;
        merged[i] = std::move(old_side);
      }
    }
    for (std::size_t i = 0; i < names.size(); ++i) detail::store_offset(global_.mutable_view(names[i]), base[i], merged[i], 1.0);
    ++tasks_;
  }

  [[nodiscard]] const memory_store& global() const noexcept { return global_; }
  [[nodiscard]] const memory_store& initial() const noexcept { return initial_; }
  [[nodiscard]] std::size_t tasks() const noexcept { return tasks_; }

 private:
  memory_store initial_;
  memory_store global_;
  dop_options options_;
  std::size_t tasks_ = 0;
};

}  // namespace alloy
