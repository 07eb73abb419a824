#pragma once
// The example's own small CLIP. No pretrained CLIP can be downloaded here, so the example makes one:
// it learns a BPE vocabulary from every prompt of every dataset, then trains a small CLIP
// contrastively on the pretraining split of the datasets (images with captions drawn from their
// prompt templates), and saves it as a Hugging Face folder (config.json, model.safetensors,
// vocab.json, merges.txt) with `alloy_pretraining.json` recording the recipe, the loss per epoch,
// the time taken and the zero-shot accuracy on each dataset's test split. A later run with the
// same recipe reuses the folder.
//
// The contrastive loss is CLIP's symmetric cross-entropy, with one change that small labelled data
// needs: a batch holds many images of the same class, whose captions are equally right, so every
// caption of the image's dataset and class is a positive (the target row is uniform over them,
// as in SupCon, Khosla et al. 2020) instead of only the caption drawn for that image.

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../data/datasets.hpp"
#include "checkpoint.hpp"
#include "device.hpp"
#include "model.hpp"
#include "tokenizer.hpp"
#include "zero_shot.hpp"

namespace alloy_clip {

// A CLIP folder loaded for use: the model, its tokenizer, and the image normalisation its
// preprocessor_config.json names (none for the example's base, which normalises per dataset).
struct clip_bundle {
  std::filesystem::path folder;
  clip_model model{nullptr};
  clip_tokenizer tokenizer;
  std::optional<normalization> model_normalization;

  // The input transform for a dataset whose training split is `train`.
  [[nodiscard]] image_transform transform_for(const image_dataset& train) const {
    return {model->config.vision.image_size, model->config.vision.num_channels,
            model_normalization ? *model_normalization : normalization::of(train.images)};
  }
};

inline clip_bundle load_clip_folder(const std::filesystem::path& folder) {
  if (!std::filesystem::is_directory(folder)) {
    alloy::fail(alloy::error_code::not_found, "no CLIP folder at ", folder.string(),
                        " (expected config.json, model.safetensors, vocab.json and merges.txt)");
  }
  clip_tokenizer tokenizer = clip_tokenizer::load(folder);
  clip_model model = load_pretrained(folder);
  if (static_cast<std::int64_t>(tokenizer.vocab_size()) > model->config.text.vocab_size) {
    alloy::fail(alloy::error_code::shape_mismatch, folder.string(), ": the tokenizer has ", tokenizer.vocab_size(),
                        " ids but the text model embeds ", model->config.text.vocab_size);
  }
  return {folder, std::move(model), std::move(tokenizer), normalization::of_model(folder)};
}

inline std::vector<std::string> prompt_corpus();

// A hash of the prompt corpus (FNV-1a): a base whose vocabulary was learned from other prompts is
// pretrained again.
inline std::string prompt_corpus_fingerprint() {
  std::string all;
  for (const auto& text : prompt_corpus()) all += text + "\n";
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(alloy::fnv1a64(all)));
  return hex;
}

struct pretrain_options {
  std::vector<std::string> datasets = builtin_dataset_names();
  split_options split;
  std::int64_t epochs = 10;
  // Images drawn from each dataset per epoch (its pretraining split cycled through in a seeded
  // order), so that the 359 pretraining digits weigh as much as the 14,000 clothes.
  std::int64_t images_per_dataset = 2000;
  std::int64_t batch = 128;
  double learning_rate = 2e-3;
  double weight_decay = 0.1;
  std::uint64_t seed = 0;
  // Architecture: the vocabulary size and token ids are set from the learned vocabulary.
  clip_config model = small_config();
  std::function<void(const std::string&)> log = [](const std::string&) {};

  // A ViT with 7-pixel patches on 28-pixel images (16 patches and a class token) and a text
  // transformer over 32 tokens, each of width 128 and depth 3: small enough to pretrain in
  // minutes on 2 CPU cores (DESIGN.md's calibration), big enough to read digits and clothes.
  static clip_config small_config() {
    clip_config c;
    c.vision.image_size = 28;
    c.vision.patch_size = 7;
    c.vision.num_channels = 3;
    c.vision.hidden_size = 128;
    c.vision.intermediate_size = 512;
    c.vision.num_hidden_layers = 3;
    c.vision.num_attention_heads = 4;
    c.text.max_position_embeddings = 32;
    c.text.hidden_size = 128;
    c.text.intermediate_size = 512;
    c.text.num_hidden_layers = 3;
    c.text.num_attention_heads = 4;
    c.projection_dim = 128;
    return c;
  }

  // What determines the result: a folder made with a different recipe is not reused.
  [[nodiscard]] nlohmann::json recipe() const {
    return {{"datasets", datasets},
            {"split", {{"test_fraction", split.test_fraction}, {"pretrain_fraction", split.pretrain_fraction}, {"seed", split.seed}}},
            {"epochs", epochs},
            {"images_per_dataset", images_per_dataset},
            {"batch", batch},
            {"learning_rate", learning_rate},
            {"weight_decay", weight_decay},
            {"seed", seed},
            {"model", model.to_json()},
            {"prompts", prompt_corpus_fingerprint()},
            {"version", 1}};
  }
};

// Every prompt of every built-in dataset and its variants: the corpus of the base's vocabulary.
// (Words outside it, such as a user's class names, still encode, as byte-level pieces.)
inline std::vector<std::string> prompt_corpus() {  // (declared above)
  std::vector<std::string> texts;
  for (const auto& d : builtin_datasets()) {
    for (const auto& name : d.classes) {
      for (const auto& t : d.templates) {
        image_dataset one{d.name, {}, {}, {name}, {t}};
        texts.push_back(one.prompt(0, 0));
        for (const char* kind : variant_kinds) {
          one.templates = {variant_template(t, kind)};
          texts.push_back(one.prompt(0, 0));
        }
      }
    }
  }
  return texts;
}

struct pretrain_result {
  double seconds = 0;
  std::vector<double> epoch_loss;
  std::map<std::string, double> zero_shot;  // test-split accuracy per dataset
};

// Pretrains a small CLIP on the pretraining splits of `options.datasets` and saves it in `folder`
// (written beside it under a temporary name and renamed when complete).
inline pretrain_result pretrain_small_clip(const std::filesystem::path& folder, const std::filesystem::path& datasets_dir,
                                           const pretrain_options& options, const ::torch::Device& device) {
  const auto started = std::chrono::steady_clock::now();
  const bpe_vocabulary vocabulary = bpe_vocabulary::train(prompt_corpus());
  const clip_tokenizer tokenizer = vocabulary.tokenizer();
  clip_config config = options.model;
  config.text.vocab_size = static_cast<std::int64_t>(vocabulary.symbols.size());
  config.text.bos_token_id = tokenizer.bos_id();
  config.text.eos_token_id = tokenizer.eos_id();
  config.text.pad_token_id = tokenizer.pad_id();
  ::torch::manual_seed(options.seed);
  clip_model model(config);
  model->to(device);

  // The pretraining images (normalised per dataset), their (dataset, class) keys, and the ids of
  // every caption, indexed [dataset][class][template].
  std::vector<::torch::Tensor> inputs, keys;
  std::vector<std::vector<::torch::Tensor>> captions;
  std::vector<std::int64_t> template_counts;
  std::vector<image_dataset> tests;
  std::vector<image_transform> transforms;
  for (std::size_t d = 0; d < options.datasets.size(); ++d) {
    const image_dataset data = load_dataset(options.datasets[d], datasets_dir);
    const dataset_splits parts = split_dataset(data, options.split);
    const image_transform transform{config.vision.image_size, config.vision.num_channels, normalization::of(parts.train.images)};
    inputs.push_back(transform(parts.pretrain.images, ::torch::kCPU));
    keys.push_back(parts.pretrain.labels + static_cast<std::int64_t>(d * 1000));
    captions.emplace_back();
    for (std::size_t c = 0; c < data.classes.size(); ++c) {
      std::vector<std::string> texts;
      for (std::size_t t = 0; t < data.templates.size(); ++t) texts.push_back(data.prompt(t, static_cast<std::int64_t>(c)));
      captions.back().push_back(tokenize(tokenizer, texts, config.text.max_position_embeddings));
    }
    template_counts.push_back(static_cast<std::int64_t>(data.templates.size()));
    tests.push_back(parts.test);
    transforms.push_back(transform);
    options.log(data.name + ": " + std::to_string(parts.pretrain.size()) + " pretraining images");
  }
  const ::torch::Tensor images = ::torch::cat(inputs);
  const ::torch::Tensor image_keys = ::torch::cat(keys);
  std::vector<std::int64_t> offsets{0};
  for (const auto& part : inputs) offsets.push_back(offsets.back() + part.size(0));
  const std::int64_t count = options.images_per_dataset * static_cast<std::int64_t>(inputs.size());
  const std::int64_t steps_per_epoch = (count + options.batch - 1) / options.batch;
  const std::int64_t total_steps = steps_per_epoch * options.epochs;
  const std::int64_t warmup = std::max<std::int64_t>(1, total_steps / 20);
  // Epoch e: images_per_dataset from each dataset, continuing its seeded cycle, then shuffled together.
  const auto epoch_order = [&](std::int64_t epoch) {
    std::vector<std::int64_t> picked;
    for (std::size_t d = 0; d < inputs.size(); ++d) {
      const std::int64_t n = offsets[d + 1] - offsets[d];
      if (n == 0) {
        alloy::fail(alloy::error_code::invalid_argument, options.datasets[d], " has no pretraining images (pretrain_fraction ",
                            options.split.pretrain_fraction, ")");
      }
      const std::vector<std::int64_t> cycle = seeded_permutation(n, options.seed * 7919u + d);
      for (std::int64_t k = 0; k < options.images_per_dataset; ++k) {
        const std::int64_t at = epoch * options.images_per_dataset + k;
        picked.push_back(offsets[d] + cycle[static_cast<std::size_t>(at % n)]);
      }
    }
    const std::vector<std::int64_t> mix = seeded_permutation(static_cast<std::int64_t>(picked.size()),
                                                             options.seed * 1000003u + static_cast<std::uint64_t>(epoch));
    std::vector<std::int64_t> order(picked.size());
    for (std::size_t k = 0; k < mix.size(); ++k) order[k] = picked[static_cast<std::size_t>(mix[k])];
    return order;
  };

  // Weight decay on matrices only (not on biases, norms, embeddings' class token or the logit scale).
  std::vector<::torch::Tensor> decayed, plain;
  for (const auto& item : model->named_parameters()) {
    const bool matrix = item.value().dim() >= 2 && item.key().find("embedding") == std::string::npos;
    (matrix ? decayed : plain).push_back(item.value());
  }
  std::vector<::torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decayed, std::make_unique<::torch::optim::AdamWOptions>(
                                   ::torch::optim::AdamWOptions(options.learning_rate).weight_decay(options.weight_decay)));
  groups.emplace_back(plain, std::make_unique<::torch::optim::AdamWOptions>(
                                 ::torch::optim::AdamWOptions(options.learning_rate).weight_decay(0.0)));
  ::torch::optim::AdamW optimizer(groups, ::torch::optim::AdamWOptions(options.learning_rate));

  pretrain_result result;
  std::int64_t step = 0;
  model->train();
  for (std::int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    const auto epoch_started = std::chrono::steady_clock::now();
    const std::vector<std::int64_t> order = epoch_order(epoch);
    double loss_sum = 0;
    for (std::int64_t from = 0; from < count; from += options.batch) {
      const std::int64_t to = std::min(count, from + options.batch);
      const ::torch::Tensor index = ::torch::tensor(std::vector<std::int64_t>(order.begin() + from, order.begin() + to), ::torch::kInt64);
      const ::torch::Tensor batch_keys = image_keys.index_select(0, index);
      // One caption per image, its template drawn from the image's position and the epoch.
      std::vector<::torch::Tensor> ids;
      const auto* key = batch_keys.data_ptr<std::int64_t>();
      for (std::int64_t k = 0; k < batch_keys.size(0); ++k) {
        const auto d = static_cast<std::size_t>(key[k] / 1000);
        const auto c = static_cast<std::size_t>(key[k] % 1000);
        const auto t = seeded_permutation(template_counts[d], options.seed + static_cast<std::uint64_t>(step * 4099 + k))[0];
        ids.push_back(captions[d][c][t]);
      }
      const ::torch::Tensor text = ::torch::stack(ids).to(device);
      const ::torch::Tensor pixels = images.index_select(0, index).to(device);
      const ::torch::Tensor same = batch_keys.unsqueeze(1).eq(batch_keys.unsqueeze(0)).to(::torch::kFloat32).to(device);
      const ::torch::Tensor targets = same / same.sum(1, true);

      const double progress = static_cast<double>(step) / static_cast<double>(total_steps);
      const double rate = step < warmup ? options.learning_rate * static_cast<double>(step + 1) / static_cast<double>(warmup)
                                        : options.learning_rate * 0.5 * (1.0 + std::cos(M_PI * progress));
      for (auto& group : optimizer.param_groups()) static_cast<::torch::optim::AdamWOptions&>(group.options()).lr(rate);

      ::torch::Tensor loss;
      {
        autocast_scope autocast(device);
        const ::torch::Tensor logits = model->forward(pixels, text).to(::torch::kFloat32);
        loss = 0.5 * (-(targets * ::torch::log_softmax(logits, 1)).sum(1).mean() -
                      (targets * ::torch::log_softmax(logits.t(), 1)).sum(1).mean());
      }
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      {
        // CLIP clamps the temperature so that exp(logit_scale) stays at most 100.
        ::torch::NoGradGuard no_grad;
        model->logit_scale.clamp_(0.0, std::log(100.0));
      }
      loss_sum += loss.item<double>() * static_cast<double>(to - from);
      ++step;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_started).count();
    result.epoch_loss.push_back(loss_sum / static_cast<double>(count));
    char line[160];
    std::snprintf(line, sizeof line, "pretraining epoch %lld/%lld: loss %.4f (%.1f s)", static_cast<long long>(epoch + 1),
                  static_cast<long long>(options.epochs), result.epoch_loss.back(), seconds);
    options.log(line);
  }

  model->to(::torch::kCPU);
  embedding_cache cache;
  for (std::size_t d = 0; d < tests.size(); ++d) {
    result.zero_shot[options.datasets[d]] = zero_shot(model, tokenizer, tests[d], transforms[d], ::torch::kCPU, &cache).accuracy;
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  // Write the folder beside its final place, then rename: a killed run leaves no half-made base.
  const std::filesystem::path partial = alloy::temporary_sibling(folder, "pretrain");
  save_pretrained(model, partial);
  vocabulary.save(partial);
  nlohmann::json record = {{"recipe", options.recipe()},
                           {"seconds", result.seconds},
                           {"device", device.str()},
                           {"epoch_loss", result.epoch_loss},
                           {"zero_shot_test_accuracy", result.zero_shot}};
  alloy::write_file_atomically(partial / "alloy_pretraining.json", record.dump(2) + "\n");
  std::filesystem::remove_all(folder);
  std::filesystem::rename(partial, folder);
  return result;
}

// The recipe a folder was pretrained with, or null when it has none.
inline nlohmann::json pretraining_record(const std::filesystem::path& folder) {
  const auto file = folder / "alloy_pretraining.json";
  if (!std::filesystem::is_regular_file(file)) return nullptr;
  std::ifstream in(file);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error&) {
    return nullptr;
  }
}

// The example's base in `folder`: reused when it was made with this recipe, pretrained otherwise.
inline clip_bundle small_clip(const std::filesystem::path& folder, const std::filesystem::path& datasets_dir,
                              const pretrain_options& options, const ::torch::Device& device, bool force = false) {
  const nlohmann::json record = pretraining_record(folder);
  if (force || record.is_null() || !record.contains("recipe") || record["recipe"] != options.recipe()) {
    options.log(record.is_null() ? "pretraining the small CLIP into " + folder.string()
                                 : "the small CLIP in " + folder.string() + " has another recipe: pretraining it again");
    pretrain_small_clip(folder, datasets_dir, options, device);
  }
  return load_clip_folder(folder);
}

}  // namespace alloy_clip
