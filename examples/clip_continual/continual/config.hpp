#pragma once
// The settings of a continual-learning run of the CLIP example (saved with its checkpoints, and
// compared on resume).

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/continual/dop.hpp"

namespace alloy_clip {

struct continual_config {
  std::vector<std::string> tasks = {"mnist-inverted", "fashion_mnist-rotated", "digits-rotated", "mnist-rotated",
                                    "fashion_mnist-inverted"};
  std::string heldout = "digits-inverted";
  std::vector<std::string> methods = {"zero_shot", "sequential_finetune", "independent", "merge_avg", "pam"};
  std::int64_t orders = 3;
  std::int64_t epochs = 3;
  std::int64_t max_train = 2000;  // training images per task
  std::int64_t max_test = 1000;   // test images per task
  std::int64_t batch = 64;
  double learning_rate = 1e-2;  // AdamW on the LoRA factors
  std::int64_t lora_rank = 8;
  double lora_alpha = 16;
  std::vector<std::string> lora_targets = {"q_proj", "v_proj", "fc1", "fc2"};  // in the vision tower
  double p = 0.5;                // PAM's top-p fraction of G
  std::int64_t align_every = 10;  // PAM every K optimizer steps
  double merge_weight = 0;    // average-merging methods: 0 for the running mean, else G <- (1 - w) G + w T
  double ties_density = 0.2;  // TIES keeps the top 20% of each task vector (Yadav et al.'s default k)
  double opcm_alpha = 0.5;  // OPCM's protected share of singular mass (fusion_bench's default)
  alloy::dop_options dop{};  // DOP: fusion_bench's defaults (alpha 0.8, 200 Adam steps at 1e-4, MGDA with EMA 0.999)
  double l2_strength = 1.0;
  double sign_strength = 0.1;
  std::vector<double> p_sweep;  // PAM's p values for the stability-plasticity curve (every order)
  std::uint64_t seed = 0;

  [[nodiscard]] nlohmann::json to_json() const {
    return {{"tasks", tasks},
            {"heldout", heldout},
            {"methods", methods},
            {"orders", orders},
            {"epochs", epochs},
            {"max_train", max_train},
            {"max_test", max_test},
            {"batch", batch},
            {"learning_rate", learning_rate},
            {"optimizer", "AdamW"},
            {"lora", {{"rank", lora_rank}, {"alpha", lora_alpha}, {"targets", lora_targets}, {"tower", "vision"}}},
            {"pam", {{"p", p}, {"every", align_every}}},
            {"merge_weight", merge_weight},
            {"ties_density", ties_density},
            {"opcm", {{"alpha", opcm_alpha}}},
            {"dop", {{"alpha", dop.alpha}, {"steps", dop.steps}, {"learning_rate", dop.learning_rate},
                     {"svd_epsilon", dop.svd_epsilon}, {"mgda", dop.mgda}, {"ema", dop.ema}, {"ema_beta", dop.ema_beta}}},
            {"l2_strength", l2_strength},
            {"sign_strength", sign_strength},
            {"p_sweep", p_sweep},
            {"seed", seed}};
  }
};

}  // namespace alloy_clip
