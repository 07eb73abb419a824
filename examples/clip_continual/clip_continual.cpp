// clip_continual: alloy's reference CLIP example.
//
//   clip_continual pretrain  [--data DIR] [--output DIR] [--epochs N] [--images-per-dataset N] [--seed S]
//                            [--device D] [--force]
//   clip_continual zeroshot  [--model DIR] [--data DIR] [--datasets a,b,...] [--image-folder DIR]
//                            [--image-csv FILE] [--device D] [--batch N]
//
// Without --model, the example's own small CLIP is used, pretrained into DATA/models/alloy-clip-small
// the first time (minutes on 2 CPU cores) and reused after. --model takes any Hugging Face CLIP
// folder (config.json, model.safetensors, vocab.json, merges.txt, and preprocessor_config.json for
// its image normalisation).

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "clip/pretrain.hpp"
#include "data/image_files.hpp"

namespace {

std::filesystem::path default_data_dir() {
  if (const char* dir = std::getenv("ALLOY_DATA_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (const char* cache = std::getenv("XDG_CACHE_HOME"); cache != nullptr && *cache != '\0') return std::filesystem::path(cache) / "alloy";
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') return std::filesystem::path(home) / ".cache" / "alloy";
  return ".alloy-data";
}

struct common_options {
  std::string data = default_data_dir().string();
  std::string device = "cpu";
  std::uint64_t seed = 0;
  bool quiet = false;

  void add_to(CLI::App& app) {
    app.add_option("--data", data, "Data folder: datasets/ (prepare_datasets, export_digits.py) and models/ (default $ALLOY_DATA_DIR or ~/.cache/alloy)");
    app.add_option("--device", device, "cpu, cuda or cuda:N (bf16 autocast on CUDA)");
    app.add_option("--seed", seed, "Seed of the data split and of training");
    app.add_flag("--quiet", quiet, "Print results only");
  }
  [[nodiscard]] std::filesystem::path datasets() const { return std::filesystem::path(data) / "datasets"; }
  [[nodiscard]] std::filesystem::path base_folder() const { return std::filesystem::path(data) / "models" / "alloy-clip-small"; }
  [[nodiscard]] alloy_clip::pretrain_options pretraining() const {
    alloy_clip::pretrain_options options;
    options.seed = seed;
    options.split.seed = seed;
    if (!quiet) options.log = [](const std::string& line) { std::cerr << line << std::endl; };
    return options;
  }
};

int run_pretrain(const common_options& common, const std::string& output, std::int64_t epochs, std::int64_t per_dataset,
                 bool force) {
  alloy_clip::pretrain_options options = common.pretraining();
  if (epochs > 0) options.epochs = epochs;
  if (per_dataset > 0) options.images_per_dataset = per_dataset;
  const std::filesystem::path folder = output.empty() ? common.base_folder() : std::filesystem::path(output);
  const auto device = alloy_clip::parse_device(common.device);
  alloy_clip::small_clip(folder, common.datasets(), options, device, force);
  const nlohmann::json record = alloy_clip::pretraining_record(folder);
  std::printf("small CLIP in %s (pretrained in %.0f s on %s)\n", folder.string().c_str(), record["seconds"].get<double>(),
              record["device"].get<std::string>().c_str());
  for (const auto& [name, accuracy] : record["zero_shot_test_accuracy"].items()) {
    std::printf("  zero-shot %-14s %5.1f%%\n", name.c_str(), 100.0 * accuracy.get<double>());
  }
  return 0;
}

int run_zero_shot(const common_options& common, const std::string& model_dir, const std::vector<std::string>& names,
                  const std::string& image_folder, const std::string& image_csv, std::int64_t batch) {
  const auto device = alloy_clip::parse_device(common.device);
  alloy_clip::clip_bundle clip = model_dir.empty()
                                     ? alloy_clip::small_clip(common.base_folder(), common.datasets(), common.pretraining(), device)
                                     : alloy_clip::load_clip_folder(model_dir);
  clip.model->to(device);
  alloy_clip::split_options split;
  split.seed = common.seed;
  std::vector<alloy_clip::image_dataset> sets;
  for (const auto& name : names) sets.push_back(alloy_clip::load_dataset(name, common.datasets()));
  const auto size = static_cast<int>(clip.model->config.vision.image_size);
  const auto channels = static_cast<int>(clip.model->config.vision.num_channels);
  if (!image_folder.empty()) {
    sets.push_back(alloy_clip::from_image_set(alloy_clip::load_image_folder(image_folder, size, channels),
                                              std::filesystem::path(image_folder).filename().string()));
  }
  if (!image_csv.empty()) {
    sets.push_back(alloy_clip::from_image_set(alloy_clip::load_image_csv(image_csv, size, channels),
                                              std::filesystem::path(image_csv).stem().string()));
  }
  alloy_clip::embedding_cache cache;
  std::printf("zero-shot accuracy of %s on the test split (%s)\n", clip.folder.string().c_str(), device.str().c_str());
  for (const auto& data : sets) {
    const alloy_clip::dataset_splits parts = alloy_clip::split_dataset(data, split);
    const auto result = alloy_clip::zero_shot(clip.model, clip.tokenizer, parts.test, clip.transform_for(parts.train), device, &cache, batch);
    std::printf("  %-22s %5.1f%%  (%lld of %lld; chance %.1f%%)\n", data.name.c_str(), 100.0 * result.accuracy,
                static_cast<long long>(result.correct), static_cast<long long>(result.total), 100.0 / static_cast<double>(data.classes.size()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"alloy's reference CLIP example: a small CLIP pretrained here or any Hugging Face CLIP folder"};
  app.require_subcommand(1);
  common_options common;

  auto* pretrain = app.add_subcommand("pretrain", "Pretrain the example's small CLIP (reused when its recipe is unchanged)");
  common.add_to(*pretrain);
  std::string output;
  std::int64_t epochs = 0, per_dataset = 0;
  bool force = false;
  pretrain->add_option("--output", output, "Folder of the model (default DATA/models/alloy-clip-small)");
  pretrain->add_option("--epochs", epochs, "Pretraining epochs (default 10)")->check(CLI::PositiveNumber);
  pretrain->add_option("--images-per-dataset", per_dataset, "Images drawn from each dataset per epoch (default 2000)")
      ->check(CLI::PositiveNumber);
  pretrain->add_flag("--force", force, "Pretrain even when the folder holds a model of the same recipe");

  auto* zeroshot = app.add_subcommand("zeroshot", "Zero-shot classification of datasets by text prompts");
  common.add_to(*zeroshot);
  std::string model_dir, image_folder, image_csv;
  std::vector<std::string> names = alloy_clip::builtin_dataset_names();
  std::int64_t batch = 256;
  zeroshot->add_option("--model", model_dir, "A Hugging Face CLIP folder (default: the example's small CLIP)");
  zeroshot->add_option("--datasets", names, "Built-in datasets (mnist, fashion_mnist, digits, each also NAME-inverted, NAME-rotated)")
      ->delimiter(',');
  zeroshot->add_option("--image-folder", image_folder, "Also classify ROOT/<class>/<images> (prompt: a photo of a {}.)");
  zeroshot->add_option("--image-csv", image_csv, "Also classify a CSV of path,label");
  zeroshot->add_option("--batch", batch, "Images per forward pass")->check(CLI::PositiveNumber);

  CLI11_PARSE(app, argc, argv);
  try {
    if (pretrain->parsed()) return run_pretrain(common, output, epochs, per_dataset, force);
    return run_zero_shot(common, model_dir, names, image_folder, image_csv, batch);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "clip_continual: %s\n", e.what());
    return 1;
  }
}
