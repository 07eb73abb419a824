// clip_continual: alloy's reference CLIP example.
//
//   clip_continual pretrain  [--data DIR] [--output DIR] [--epochs N] [--images-per-dataset N] [--seed S]
//                            [--device D] [--force]
//   clip_continual run       [--name NAME] [--runs DIR] [--full] [--setting novel|broad|long] [--tasks a,b,...]
//                            [--orders N] [--methods a,b,...] [--epochs N] [--p-sweep] [--resume] [--model DIR]
//                            [--data DIR] [--seed S] [--device D] [--threads N] [--nproc N]
//   clip_continual zeroshot  [--model DIR] [--data DIR] [--datasets a,b,...] [--image-folder DIR]
//                            [--image-csv FILE] [--device D] [--batch N]
//
// Without --model, the example's own small CLIP is used, pretrained into DATA/models/alloy-clip-small
// the first time (minutes on 2 CPU cores) and reused after. --model takes any Hugging Face CLIP
// folder (config.json, model.safetensors, vocab.json, merges.txt, and preprocessor_config.json for
// its image normalisation).
//
// `run` trains data parallel over N processes with --nproc N (this machine, Gloo over loopback), or
// over the ranks a launcher starts (torchrun: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

#include <CLI/CLI.hpp>
#include <dlfcn.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "clip/pretrain.hpp"
#include "continual/launcher.hpp"
#include "continual/report.hpp"
#include "continual/runner.hpp"
#include "data/image_files.hpp"

namespace {

// --threads for every CPU pool the example computes on. torch::set_num_threads sets torch's own;
// Debian's LibTorch multiplies matrices through OpenBLAS's pthreads build, which keeps its own pool
// of one thread per core (unless OPENBLAS_NUM_THREADS or OMP_NUM_THREADS said otherwise when it
// loaded), and whose products round differently with another thread count. Where the BLAS is not
// OpenBLAS there is no such function, and nothing more to set.
void set_cpu_threads(int threads) {
  torch::set_num_threads(threads);
  using set_blas_threads = void (*)(int);
  if (void* function = dlsym(RTLD_DEFAULT, "openblas_set_num_threads"); function != nullptr) {
    reinterpret_cast<set_blas_threads>(function)(threads);
  }
}

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
  int threads = 0;  // 0: torch's default
  bool quiet = false;

  void add_to(CLI::App& app) {
    app.add_option("--data", data, "Data folder: datasets/ (prepare_datasets, export_digits.py) and models/ (default $ALLOY_DATA_DIR or ~/.cache/alloy)");
    app.add_option("--device", device, "cpu, cuda or cuda:N (bf16 autocast on CUDA)");
    app.add_option("--seed", seed, "Seed of the data split and of training");
    app.add_option("--threads", threads,
                   "CPU threads of torch's operations and of OpenBLAS's matrix products (default: theirs, OMP_NUM_THREADS); figures depend on it")
        ->check(CLI::PositiveNumber);
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

struct run_options {
  std::string name = "quick";
  std::string runs = "runs";
  std::string model, setting = "novel", heldout;
  bool full = false, resume = false, p_sweep = false;
  int processes = 1;
  std::int64_t orders = 0, epochs = 0, max_train = 0, max_test = 0, lora_rank = 0, align_every = 0;
  double learning_rate = 0, p = 0, l2_strength = -1, sign_strength = -1, ties_density = -1,
         merge_weight = -1;
  std::vector<std::string> methods, lora_targets, tasks;
};

// The run's folder: its checkpoints removed unless resuming, and the settings that made them.
void prepare_run_folder(const alloy_clip::continual_config& config, const run_options& options, const std::filesystem::path& dir,
                        const std::filesystem::path& checkpoints) {
  if (!options.resume && std::filesystem::exists(checkpoints)) std::filesystem::remove_all(checkpoints);
  std::filesystem::create_directories(checkpoints);
  if (options.resume) {
    // The checkpoints are only valid for the settings that made them.
    const auto settings = checkpoints / "config.json";
    if (std::filesystem::exists(settings)) {
      std::ifstream in(settings);
      if (nlohmann::json::parse(in) != config.to_json()) {
        alloy::fail(alloy::error_code::invalid_argument, dir.string(),
                            " was made with other settings: run with those, or without --resume to start again");
      }
    }
  }
  {
    std::ofstream out(checkpoints / "config.json");
    out << config.to_json().dump(2) << "\n";
  }
}

int run_continual(const common_options& common, const run_options& options) {
  const auto started = std::chrono::steady_clock::now();
  const auto device = alloy_clip::parse_device(common.device);
  alloy_clip::continual_config config;
  config.seed = common.seed;
  const alloy_clip::task_setting& setting = alloy_clip::find_setting(options.setting);  // unknown names fail here
  config.setting = setting.name;
  config.tasks = setting.tasks;
  config.heldout = setting.heldout;
  if (!options.tasks.empty() || !options.heldout.empty()) config.setting = "custom";
  if (!options.tasks.empty()) config.tasks = options.tasks;
  if (!options.heldout.empty()) config.heldout = options.heldout;
  config.check_tasks();
  if (options.full) {
    config.methods.clear();
    for (const auto& m : alloy_clip::all_methods()) config.methods.push_back(m.key);
    config.orders = 10;
    config.max_test = 2000;
    config.p_sweep = {0.1, 0.3, 0.5, 0.7, 0.9};
  }
  if (options.p_sweep) config.p_sweep = {0.1, 0.3, 0.5, 0.7, 0.9};
  if (!options.methods.empty()) config.methods = options.methods;
  if (options.orders > 0) config.orders = options.orders;
  if (options.epochs > 0) config.epochs = options.epochs;
  if (options.max_train > 0) config.max_train = options.max_train;
  if (options.max_test > 0) config.max_test = options.max_test;
  if (options.lora_rank > 0) config.lora_rank = options.lora_rank;
  if (options.learning_rate > 0) config.learning_rate = options.learning_rate;
  if (options.p > 0) config.p = options.p;
  if (options.align_every > 0) config.align_every = options.align_every;
  if (options.l2_strength >= 0) config.l2_strength = options.l2_strength;
  if (options.sign_strength >= 0) config.sign_strength = options.sign_strength;
  if (options.ties_density >= 0) config.ties_density = options.ties_density;
  if (options.merge_weight >= 0) config.merge_weight = options.merge_weight;
  if (!options.lora_targets.empty()) config.lora_targets = options.lora_targets;
  std::vector<const alloy_clip::method_spec*> methods;
  for (const auto& key : config.methods) methods.push_back(&alloy_clip::find_method(key));  // unknown keys fail here

  // The processes training together: one, or the ranks of a launcher's environment. Rank 0 alone
  // writes the run's folder; the others wait for it where they need what it wrote.
  // (A long timeout: the others wait at a barrier while rank 0 pretrains the base, minutes on a
  // CPU; a rank that fails does not leave them waiting, the launcher stops them.)
  const auto group = alloy::torch_adapter::data_parallel::from_environment(std::chrono::minutes(30));
  const bool root = group.is_root();
  const std::filesystem::path dir = std::filesystem::path(options.runs) / options.name;
  const std::filesystem::path checkpoints = dir / "checkpoints";
  if (root) prepare_run_folder(config, options, dir, checkpoints);
  const auto log = [&](const std::string& line) {
    if (!common.quiet && root) std::cerr << line << std::endl;
  };
  // Rank 0 first: it may pretrain the base, which the others then read.
  if (!root) group.barrier();
  alloy_clip::clip_bundle clip = options.model.empty()
                                     ? alloy_clip::small_clip(common.base_folder(), common.datasets(), common.pretraining(), device)
                                     : alloy_clip::load_clip_folder(options.model);
  if (root) group.barrier();
  alloy_clip::continual_runner runner(clip, config, common.datasets(), device, checkpoints, log, !common.quiet && root, group);
  const auto orders = alloy_clip::task_orders(config.tasks.size(), static_cast<std::size_t>(config.orders), config.seed);

  alloy_clip::run_summary summary;
  summary.config = config.to_json();
  summary.config["model"] = clip.folder.string();
  summary.task_names = config.tasks;
  summary.task_names.push_back(config.heldout);
  summary.zero_shot = runner.zero_shot_accuracy();
  summary.orders = orders;
  summary.device = device.str();
  summary.threads = torch::get_num_threads();
  summary.processes = group.size();
  const auto run_all = [&](const alloy_clip::method_spec& method, double p) {
    std::vector<alloy_clip::cell_result> cells;
    for (std::size_t k = 0; k < orders.size(); ++k) cells.push_back(runner.run(method, k, orders[k], p));
    return alloy_clip::method_summary::of(cells, runner.zero_shot_accuracy());
  };
  for (const auto* method : methods) summary.methods.push_back(run_all(*method, config.p));
  for (const double p : config.p_sweep) summary.p_sweep.push_back(run_all(alloy_clip::find_method("pam"), p));
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (!root) return 0;
  const auto report = alloy_clip::write_report(summary, dir);

  std::printf("%-20s %-20s %-23s %-20s  (mean [95%% interval] over %zu orders)\n", "method", "ACC (%)", "BWT (points)",
              "held-out (%)", orders.size());
  for (const auto& m : summary.methods) {
    std::printf("%-20s %-20s %-23s %-20s\n", m.key.c_str(), alloy_clip::detail::pct_ci(m.acc).c_str(),
                alloy_clip::detail::pct_ci(m.bwt).c_str(), alloy_clip::detail::pct_ci(m.heldout).c_str());
  }
  std::printf("report: %s\n", report.string().c_str());
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

  auto* run = app.add_subcommand("run", "The continual-learning study: PAM against the baselines, with a report");
  common.add_to(*run);
  run_options run_opts;
  run->add_option("--name", run_opts.name, "Run name: results go to RUNS/NAME (default quick, or full with --full)");
  run->add_option("--runs", run_opts.runs, "Folder of the runs (default runs)");
  run->add_option("--setting", run_opts.setting,
                  "Task sequence: novel (variants the base cannot classify; default), broad (distortions it recognises "
                  "well above chance), long (21 tasks)");
  run->add_option("--tasks", run_opts.tasks, "Tasks in the given order instead of the setting's (dataset names, as zeroshot takes)")
      ->delimiter(',');
  run->add_option("--heldout", run_opts.heldout, "The task never trained on, instead of the setting's");
  run->add_option("--model", run_opts.model, "A Hugging Face CLIP folder as the base (default: the example's small CLIP)");
  run->add_flag("--full", run_opts.full, "The whole study: every method, 10 orders, 3 epochs, 2000 images per task, PAM's p sweep");
  run->add_option("--orders", run_opts.orders, "Task orders (default 3)")->check(CLI::PositiveNumber);
  run->add_option("--epochs", run_opts.epochs, "Epochs per task (default 3)")->check(CLI::PositiveNumber);
  run->add_option("--max-train", run_opts.max_train, "Training images per task")->check(CLI::PositiveNumber);
  run->add_option("--max-test", run_opts.max_test, "Test images per task")->check(CLI::PositiveNumber);
  run->add_option("--learning-rate", run_opts.learning_rate, "AdamW's learning rate for the LoRA factors")->check(CLI::PositiveNumber);
  run->add_option("--lora-rank", run_opts.lora_rank, "LoRA rank")->check(CLI::PositiveNumber);
  run->add_option("--lora-targets", run_opts.lora_targets, "Vision-tower layers with LoRA (q_proj,k_proj,v_proj,out_proj,fc1,fc2)")
      ->delimiter(',');
  run->add_option("--align-every", run_opts.align_every, "PAM aligns every K optimizer steps (default 10)")
      ->check(CLI::PositiveNumber);
  run->add_option("--l2-strength", run_opts.l2_strength, "l2_regularizer: the strength of (s/2) sum (T - G)^2 (default 1)")
      ->check(CLI::NonNegativeNumber);
  run->add_option("--sign-strength", run_opts.sign_strength,
                  "sign_regularizer: the strength of s sum max(0, -sign(G) T) on G's top-p entries (default 0.1)")
      ->check(CLI::NonNegativeNumber);
  run->add_option("--merge-weight", run_opts.merge_weight,
                  "Averaging methods: G <- (1 - w) G + w T with this w (default 0: the running mean, w = 1/t)")
      ->check(CLI::Range(0.0, 1.0));
  run->add_option("--ties-density", run_opts.ties_density, "ties_post, pam_ties: the fraction of each task vector TIES keeps (default 0.2)")
      ->check(CLI::Range(0.0, 1.0));
  run->add_option("--p", run_opts.p, "PAM's top-p fraction of G")->check(CLI::Range(0.0, 1.0));
  run->add_option("--methods", run_opts.methods, "Methods to run (keys of results.json)")->delimiter(',');
  run->add_flag("--p-sweep", run_opts.p_sweep, "Also run PAM at p = 0.1, 0.3, 0.5, 0.7, 0.9");
  run->add_flag("--resume", run_opts.resume, "Continue an interrupted run from its checkpoints (with any number of processes)");
  run->add_option("--nproc", run_opts.processes,
                  "Train data parallel over N processes on this machine (Gloo over loopback; each with cores / N threads "
                  "unless --threads or OMP_NUM_THREADS say otherwise); torchrun's ranks need no --nproc")
      ->check(CLI::Range(1, 256));

  CLI11_PARSE(app, argc, argv);
  try {
    if (common.threads > 0) set_cpu_threads(common.threads);
    if (pretrain->parsed()) return run_pretrain(common, output, epochs, per_dataset, force);
    if (run->parsed()) {
      if (run_opts.name == "quick") {  // the default name says what ran
        if (run_opts.full) run_opts.name = "full";
        if (run_opts.setting != "novel") run_opts.name += "-" + run_opts.setting;
      }
      if (run_opts.processes > 1) {
        const char* world = std::getenv("WORLD_SIZE");
        if (world == nullptr) return alloy_clip::launch_local_ranks(argv, run_opts.processes, common.threads > 0);
        if (std::string(world) != std::to_string(run_opts.processes)) {
          alloy::fail(alloy::error_code::invalid_argument, "--nproc ", run_opts.processes, " but a launcher set WORLD_SIZE=", world);
        }
      }
      return run_continual(common, run_opts);
    }
    return run_zero_shot(common, model_dir, names, image_folder, image_csv, batch);
  } catch (const std::exception& e) {
    const char* rank = std::getenv("WORLD_SIZE") != nullptr ? std::getenv("RANK") : nullptr;
    if (rank != nullptr) {
      std::fprintf(stderr, "clip_continual (rank %s): %s\n", rank, e.what());
    } else {
      std::fprintf(stderr, "clip_continual: %s\n", e.what());
    }
    return 1;
  }
}
