#pragma once
// The settings of a continual-learning run of the CLIP example (saved with its checkpoints, and
// compared on resume).

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/continual/dop.hpp"
#include "alloy/core/lookup.hpp"
#include "../data/datasets.hpp"

namespace alloy_clip {

// A task sequence of the study (`clip_continual run --setting NAME`): the tasks and the held-out one.
struct task_setting {
  std::string name, description;
  std::vector<std::string> tasks;
  std::string heldout;
};

// The settings, with the small base's zero-shot accuracy on their tasks in mind (measured with
// `clip_continual zeroshot`; docs/results.md has the table):
//   novel  variants the base never saw and cannot classify (zero-shot 5-9%, below chance): each
//          task's LoRA learns it from scratch, the hardest case for merging.
//   broad  distortions of what the base was pretrained on, recognised zero-shot at 37-66%: each
//          LoRA adapts what the base knows, as in the paper, where the pretrained VLM already
//          knows much of each task. One per dataset at least, none a near-copy of the base's
//          pretraining data (blurred or noisy MNIST and Fashion-MNIST it already reads at 79-89%).
//   long   every distortion of every dataset, 21 tasks: the paper's open question of long sequences.
inline const std::vector<task_setting>& task_settings() {
  static const std::vector<task_setting> all = [] {
    std::vector<task_setting> settings = {
        {"novel", "five variants the base cannot classify zero-shot",
         {"mnist-inverted", "fashion_mnist-rotated", "digits-rotated", "mnist-rotated", "fashion_mnist-inverted"},
         "digits-inverted"},
        {"broad", "five distortions the base recognises well above chance zero-shot",
         {"mnist-tilted", "fashion_mnist-flipped", "digits-blurred", "mnist-bold", "fashion_mnist-small"},
         "digits-flipped"},
        {"long", "every distortion of every dataset: 21 tasks", {}, "fashion_mnist-flipped-tilted"},
    };
    for (const auto& d : builtin_datasets()) {
      for (const char* kind : distortion_kinds) settings.back().tasks.push_back(d.name + "-" + kind);
    }
    return settings;
  }();
  return all;
}

inline const task_setting& find_setting(const std::string& name) {
  return alloy::find_named(task_settings(), name, [](const task_setting& s) -> const std::string& { return s.name; }, "setting");
}

struct continual_config {
  std::string setting = "novel";  // where tasks and heldout came from ("custom" when given by hand)
  std::vector<std::string> tasks = find_setting("novel").tasks;
  std::string heldout = find_setting("novel").heldout;
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

  // A sequence of distinct tasks, the held-out one not among them.
  void check_tasks() const {
    if (tasks.empty()) alloy::fail(alloy::error_code::invalid_argument, "no tasks to learn");
    for (std::size_t i = 0; i < tasks.size(); ++i) {
      if (tasks[i] == heldout) alloy::fail(alloy::error_code::invalid_argument, "the held-out task ", alloy::quoted{heldout}, " is also a task to learn");
      for (std::size_t j = 0; j < i; ++j) {
        if (tasks[j] == tasks[i]) alloy::fail(alloy::error_code::invalid_argument, "task ", alloy::quoted{tasks[i]}, " is in the sequence twice");
      }
    }
  }

  [[nodiscard]] nlohmann::json to_json() const {
    return {{"setting", setting},
            {"tasks", tasks},
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
