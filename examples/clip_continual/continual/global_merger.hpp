#pragma once
// The merger that keeps a merged method's global LoRA G: alloy's continual_merger, OPCM or DOP
// (their SVDs through torch on the run's device: LAPACK on the CPU, cuSOLVER on CUDA), or MagMax
// over every task vector seen. One type
// for the runner, so that it reads the same for every merged method.
//
// A method that merges the LoRA's products (method_spec::merge_products) gives its merger the
// updates scale B A of every weight instead of the factors: the merger keeps the dense merged
// update, and G is its truncated SVD at the LoRA's rank (alloy/continual/lora_product.hpp), which
// is what the model is tested with and the next task starts from. Its checkpoints hold both.

#include <torch/torch.h>

#include <cstddef>
#include <optional>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/alloy.hpp"
#include "alloy/torch.hpp"
#include "config.hpp"
#include "protocol.hpp"

namespace alloy_clip {

class global_merger {
 public:
  // A new run from G0, or (tasks_done > 0) its continuation from G after tasks_done tasks and the
  // merger's saved state.
  global_merger(const method_spec& method, const continual_config& config, alloy::continual_options options,
                const alloy::memory_store& initial, std::optional<alloy::memory_store> checkpoint, std::size_t tasks_done,
                const nlohmann::json& state, ::torch::Device device)
      : products_(method.merge_products), scale_(config.lora_alpha / static_cast<double>(config.lora_rank)), solver_{device} {
    if (!products_) {
      merger_.emplace(make(method, config, std::move(options), initial, std::move(checkpoint), tasks_done, state));
      return;
    }
    std::optional<alloy::memory_store> merged;  // the checkpoint's dense update; its factors are G
    if (!checkpoint) {
      factors_ = initial;
    } else {
      merged.emplace();
      for (const auto& name : checkpoint->names()) {
        (initial.find(name) ? factors_ : *merged).insert(std::string(name), checkpoint->view(name));
      }
    }
    merger_.emplace(make(method, config, std::move(options), alloy::lora_products(alloy::cpu_backend{}, initial, scale_),
                         std::move(merged), tasks_done, state));
  }

  // G: the merged LoRA factors.
  [[nodiscard]] const alloy::memory_store& global() const { return products_ ? factors_ : merged(); }

  // What a checkpoint keeps to resume: G, and for a merge of products the dense update too.
  [[nodiscard]] alloy::memory_store checkpoint() const {
    alloy::memory_store weights = global();
    if (products_) {
      for (const auto& name : merged().names()) weights.insert(std::string(name), merged().view(name));
    }
    return weights;
  }

  // Merging products: the share of the merged update that G's factors kept after the last task.
  [[nodiscard]] double rank_kept() const { return rank_kept_; }

  void end_task(const alloy::memory_store& trained) {
    const alloy::cpu_backend backend{};
    const alloy::memory_store products = products_ ? alloy::lora_products(backend, trained, scale_) : alloy::memory_store{};
    const alloy::memory_store& input = products_ ? products : trained;
    std::visit(
        [&](auto& merger) {
          using merger_type = std::decay_t<decltype(merger)>;
          if constexpr (std::is_same_v<merger_type, alloy::continual_merger>) {
            merger.end_task(backend, input);
          } else if constexpr (std::is_same_v<merger_type, alloy::magmax_sequence_merger>) {
            merger.end_task(input);
          } else {
            merger.end_task(backend, solver_, input);
          }
        },
        *merger_);
    if (products_) {
      alloy::lora_factorization factorization = alloy::lora_factors_of(solver_, merged(), trained, scale_);
      factors_ = std::move(factorization.factors);
      rank_kept_ = factorization.kept;
    }
  }

  // What resuming needs besides G (saved with each checkpoint).
  [[nodiscard]] nlohmann::json state() const {
    if (const auto* opcm = std::get_if<alloy::opcm_merger>(&*merger_)) {
      return {{"task_norms", opcm->task_norms()}, {"scale", opcm->scale()}};
    }
    // The selection tau_max (one double per LoRA entry: 43k for the example's LoRA); JSON writes
    // doubles with 17 digits, so it reads back bit for bit.
    if (const auto* magmax = std::get_if<alloy::magmax_sequence_merger>(&*merger_)) return {{"selection", magmax->selection()}};
    return {};
  }

 private:
  using any_merger = std::variant<alloy::continual_merger, alloy::opcm_merger, alloy::dop_merger, alloy::magmax_sequence_merger>;

  static any_merger make(const method_spec& method, const continual_config& config, alloy::continual_options options,
                         const alloy::memory_store& initial, std::optional<alloy::memory_store> global, std::size_t tasks_done,
                         const nlohmann::json& state) {
    const alloy::opcm_options opcm{config.opcm_alpha};
    switch (method.merger) {
      case merger_kind::opcm:
        if (!global) return alloy::opcm_merger(initial, opcm);
        return alloy::opcm_merger::resume(initial, std::move(*global), state.at("task_norms").get<std::vector<double>>(),
                                          state.at("scale").get<double>(), opcm);
      case merger_kind::dop:
        if (!global) return alloy::dop_merger(initial, config.dop);
        return alloy::dop_merger::resume(initial, std::move(*global), tasks_done, config.dop);
      case merger_kind::magmax_sequence:
        if (!global) return alloy::magmax_sequence_merger(initial);
        return alloy::magmax_sequence_merger::resume(initial, state.at("selection").get<std::vector<std::vector<double>>>(), tasks_done);
      case merger_kind::continual:
        break;
    }
    if (!global) return alloy::continual_merger(initial, std::move(options));
    const bool policy = options.merge_rule == alloy::continual_rule::policy;
    return alloy::continual_merger::resume(std::move(*global), tasks_done, std::move(options),
                                           policy ? std::optional<alloy::memory_store>(initial) : std::nullopt);
  }

  // The merger's G: the factors, or for a merge of products the dense update.
  [[nodiscard]] const alloy::memory_store& merged() const {
    return std::visit([](const auto& merger) -> const alloy::memory_store& { return merger.global(); }, *merger_);
  }

  bool products_;
  double scale_;  // the LoRA's alpha / rank
  std::optional<any_merger> merger_;  // (optional only to be built after the products)
  alloy::memory_store factors_;        // merging products: G, the merged update's rank-r factors
  double rank_kept_ = 1;
  alloy::torch_adapter::svd_solver solver_;
};

}  // namespace alloy_clip
