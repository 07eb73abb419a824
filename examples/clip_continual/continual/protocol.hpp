#pragma once
// The continual-learning protocol of the CLIP example: the task sequence, its orders, the methods
// compared, and the metrics of the accuracy matrix.
//
// Tasks are image classification datasets the small base cannot do zero-shot (dataset variants it
// never saw in pretraining), learned one after another, each from its own training split only.
// At test time a model classifies a task's test images among that task's classes by their prompts;
// no parameters are chosen by task (except for `independent`, the upper bound, which by definition
// uses each task's own LoRA). One more task, the held-out one, is never trained on: its accuracy
// after the last task measures generalisation.

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/align/pam.hpp"
#include "alloy/continual/continual_merger.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/lookup.hpp"
#include "../data/datasets.hpp"
#include "statistics.hpp"

namespace alloy_clip {

enum class method_kind { zero_shot, sequential, independent, merged };

// Which merger keeps G: alloy's continual_merger (running mean, fixed weight or a policy), one
// of the field's subspace-projection continual mergers (alloy/continual/opcm.hpp, dop.hpp), or
// MagMax over every task vector seen (alloy/continual/magmax_sequence.hpp).
enum class merger_kind { continual, opcm, dop, magmax_sequence };

// The soft alignment a merged method adds to its loss, if any (alloy's regularizers).
enum class regularizer_kind { none, l2_pull, sign_agreement };

// One method of the comparison (the keys of results.json), described by what it is made of:
// how T is merged back into G (alloy's continual rules; for continual_rule::policy, the merge
// method of alloy's registry), whether PAM aligns T during training and how it resets, and
// whether a regularizer joins the loss.
struct method_spec {
  std::string key;
  std::string description;
  method_kind kind = method_kind::merged;
  alloy::continual_rule merge = alloy::continual_rule::running_mean;
  std::string_view merge_method{};            // continual_rule::policy: "ties", "magmax"
  std::optional<alloy::pam_reset> pam{};      // PAM during training, resetting to zero or to G
  regularizer_kind regularizer = regularizer_kind::none;
  merger_kind merger = merger_kind::continual;
  // The merger merges the LoRA's products B A (each weight's update) instead of A and B, and G
  // is taken back to the LoRA's rank by their truncated SVD (alloy/continual/lora_product.hpp).
  bool merge_products = false;
  std::string_view compared_with{};  // the method that differs from this one by one ingredient (the report pairs them)
};

inline const std::vector<method_spec>& all_methods() {
  using alloy::continual_rule;
  using alloy::pam_reset;
  static const std::vector<method_spec> all = {
      {.key = "zero_shot", .description = "the pretrained base, untrained", .kind = method_kind::zero_shot},
      {.key = "sequential_finetune", .description = "one LoRA fine-tuned on each task in turn, no merging",
       .kind = method_kind::sequential},
      {.key = "independent", .description = "a fresh LoRA per task, each task tested with its own (upper bound)",
       .kind = method_kind::independent},
      {.key = "merge_avg", .description = "a copy of the global LoRA per task, merged back by running mean, no alignment",
       .compared_with = "sequential_finetune"},
      {.key = "pam", .description = "merge_avg with PAM during training (reset to zero)", .pam = pam_reset::to_zero,
       .compared_with = "merge_avg"},
      {.key = "pam_global_reset", .description = "merge_avg with PAM during training (reset to G)",
       .pam = pam_reset::to_global, .compared_with = "merge_avg"},
      {.key = "ties_post", .description = "TIES instead of averaging, no alignment", .merge = continual_rule::policy,
       .merge_method = "ties", .compared_with = "merge_avg"},
      {.key = "magmax", .description = "MagMax instead of averaging, no alignment", .merge = continual_rule::policy,
       .merge_method = "magmax", .compared_with = "merge_avg"},
      {.key = "l2_regularizer", .description = "merge_avg with an L2 pull towards G in the loss",
       .regularizer = regularizer_kind::l2_pull, .compared_with = "merge_avg"},
      {.key = "sign_regularizer", .description = "merge_avg with a sign-agreement penalty on G's top-p entries",
       .regularizer = regularizer_kind::sign_agreement, .compared_with = "merge_avg"},
      {.key = "pam_ties", .description = "PAM during training, then TIES merging", .merge = continual_rule::policy,
       .merge_method = "ties", .pam = pam_reset::to_zero, .compared_with = "ties_post"},
      {.key = "opcm",
       .description = "OPCM (Tang et al. 2025): each task vector projected off the merged one's leading singular "
                      "directions, the merged norm held at the tasks' mean",
       .merger = merger_kind::opcm, .compared_with = "merge_avg"},
      {.key = "dop",
       .description = "DOP: each matrix optimised to keep both the merged and the new task vector in their own "
                      "singular subspaces (MGDA-balanced)",
       .merger = merger_kind::dop, .compared_with = "merge_avg"},
      {.key = "magmax_sequence",
       .description = "MagMax as its paper runs it: G = G0 + 0.5 tau_max, the largest-magnitude entry over every "
                      "task vector seen",
       .merger = merger_kind::magmax_sequence, .compared_with = "magmax"},
      // The question the paper leaves open: merging A and B separately (every method above)
      // against merging their product B A into a low-rank global update.
      {.key = "merge_avg_ba",
       .description = "merge_avg on the LoRA's products B A (running mean of the updates), G taken back to rank r by SVD",
       .merge_products = true, .compared_with = "merge_avg"},
      {.key = "pam_ba", .description = "pam, merging the products B A (G taken back to rank r by SVD)",
       .pam = pam_reset::to_zero, .merge_products = true, .compared_with = "pam"},
      {.key = "ties_ba", .description = "ties_post on the products B A (G taken back to rank r by SVD)",
       .merge = continual_rule::policy, .merge_method = "ties", .merge_products = true, .compared_with = "ties_post"},
      {.key = "opcm_ba", .description = "opcm on the products B A, the weight updates OPCM is defined on (G taken back to rank r by SVD)",
       .merger = merger_kind::opcm, .merge_products = true, .compared_with = "opcm"},
  };
  return all;
}

inline const method_spec& find_method(const std::string& key) {
  return alloy::find_named(all_methods(), key, [](const method_spec& m) -> const std::string& { return m.key; }, "method");
}

// The orders of the tasks: order 0 as given, the others seeded permutations, all distinct.
inline std::vector<std::vector<std::size_t>> task_orders(std::size_t tasks, std::size_t count, std::uint64_t seed) {
  std::vector<std::vector<std::size_t>> orders;
  std::vector<std::size_t> given(tasks);
  for (std::size_t i = 0; i < tasks; ++i) given[i] = i;
  orders.push_back(given);
  std::size_t possible = 1;
  for (std::size_t i = 2; i <= tasks && possible < count; ++i) possible *= i;
  if (count > possible) {
    alloy::fail(alloy::error_code::invalid_argument, count, " orders asked of ", tasks, " tasks, which have only ", possible);
  }
  for (std::uint64_t attempt = 1; orders.size() < count; ++attempt) {
    const auto p = seeded_permutation(static_cast<std::int64_t>(tasks), seed * 7777u + attempt);
    std::vector<std::size_t> order(p.begin(), p.end());
    if (std::find(orders.begin(), orders.end(), order) == orders.end()) orders.push_back(order);
  }
  return orders;
}

// R[t][i]: accuracy on the task learned i-th, after learning the t-th (both 0-based; every task,
// learned or not). `baseline[i]`: the base model's zero-shot accuracy on the i-th task.
struct sequence_metrics {
  double acc = 0;  // mean of R[T-1][i]
  double bwt = 0;  // mean over i < T-1 of R[T-1][i] - R[i][i]   (Lopez-Paz and Ranzato, 2017)
  double fwt = 0;  // mean over i > 0 of R[i-1][i] - baseline[i]
  double plasticity = 0;  // mean of R[i][i]: how well each task is learned when it is learned
};

inline sequence_metrics metrics_of(const std::vector<std::vector<double>>& r, const std::vector<double>& baseline) {
  const std::size_t n = r.size();
  if (n == 0 || baseline.size() != n) alloy::fail(alloy::error_code::invalid_argument, "metrics: matrix and baseline disagree");
  sequence_metrics m;
  for (std::size_t i = 0; i < n; ++i) {
    if (r[i].size() != n) alloy::fail(alloy::error_code::invalid_argument, "metrics: the accuracy matrix is not square");
    m.acc += r[n - 1][i] / static_cast<double>(n);
    m.plasticity += r[i][i] / static_cast<double>(n);
  }
  if (n > 1) {
    for (std::size_t i = 0; i + 1 < n; ++i) m.bwt += (r[n - 1][i] - r[i][i]) / static_cast<double>(n - 1);
    for (std::size_t i = 1; i < n; ++i) m.fwt += (r[i - 1][i] - baseline[i]) / static_cast<double>(n - 1);
  }
  return m;
}

// ACC after each task t of one order: the mean accuracy over the tasks learned so far, R[t][0..t].
inline std::vector<double> acc_after_each_task(const std::vector<std::vector<double>>& r) {
  std::vector<double> curve;
  for (std::size_t t = 0; t < r.size(); ++t) {
    double sum = 0;
    for (std::size_t i = 0; i <= t; ++i) sum += r[t][i];
    curve.push_back(sum / static_cast<double>(t + 1));
  }
  return curve;
}
// BWT after each task t of one order: the mean over i < t of R[t][i] - R[i][i] (0 after the first).
inline std::vector<double> bwt_after_each_task(const std::vector<std::vector<double>>& r) {
  std::vector<double> curve;
  for (std::size_t t = 0; t < r.size(); ++t) {
    double sum = 0;
    for (std::size_t i = 0; i < t; ++i) sum += r[t][i] - r[i][i];
    curve.push_back(t == 0 ? 0.0 : sum / static_cast<double>(t));
  }
  return curve;
}

}  // namespace alloy_clip
