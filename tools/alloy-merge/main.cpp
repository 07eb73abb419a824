// alloy-merge: merges safetensors checkpoints as a mergekit YAML config describes.
//
//   alloy-merge CONFIG.yaml OUTPUT_DIR [--dry-run] [--threads N] [--shard-size SIZE]
//               [--out-dtype D] [--allow-overwrite] [--check-finite] [--quiet] [--device cpu|cuda]
//
// Exit status (docs/cli.md): 0 success, 1 unexpected failure, 2 bad command line, 3 config error,
// 4 input error, 5 output error, 6 GPU error, 130 interrupted. On any failure no output folder is left.

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "human_bytes.hpp"
#include "terminal_status.hpp"
#include "merge_config.hpp"
#include "merge_job.hpp"
#include "output_guard.hpp"
#if defined(ALLOY_HAVE_CUDA_BACKEND)
#include "gpu_merge.hpp"
#endif

namespace {

using alloy::tools::human_bytes;

enum exit_status : int {
  exit_success = 0,
  exit_unexpected = 1,
  exit_usage = 2,
  exit_config = 3,
  exit_input = 4,
  exit_output = 5,
  exit_device = 6,
  exit_interrupted = 130,
};

std::atomic<int> received_signal{0};
extern "C" void on_signal(int signal) { received_signal.store(signal); }

struct interrupted {};

// "5GB", "500MB", "2GiB", "1e9", "123456": decimal units as Hugging Face writes them, binary
// with an "i".
std::optional<std::size_t> parse_size(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::size_t end = 0;
  double value = 0;
  try {
    value = std::stod(text, &end);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::string unit = text.substr(end);
  if (!unit.empty() && unit.back() == 'B') unit.pop_back();
  double scale = 1;
  const bool binary = !unit.empty() && unit.back() == 'I';
  if (binary) unit.pop_back();
  const double step = binary ? 1024.0 : 1000.0;
  if (unit == "K") scale = step;
  else if (unit == "M") scale = step * step;
  else if (unit == "G") scale = step * step * step;
  else if (unit == "T") scale = step * step * step * step;
  else if (!unit.empty() || binary) return std::nullopt;
  const double bytes = value * scale;
  if (!(bytes >= 1) || bytes > 1e18) return std::nullopt;
  return static_cast<std::size_t>(bytes);
}

// A one-line progress bar on a terminal: tensors, bytes, rate, ETA.
class progress_bar {
 public:
  progress_bar(std::size_t tensors, std::size_t bytes, bool enabled)
      : tensors_(tensors), bytes_(bytes), line_(enabled), start_(clock::now()) {}

  void update(std::size_t tensors_done, std::size_t bytes_done) {
    if (received_signal.load() != 0) throw interrupted{};
    if (!line_.enabled()) return;
    const double seconds = std::chrono::duration<double>(clock::now() - start_).count();
    const double fraction = bytes_ == 0 ? 1.0 : static_cast<double>(bytes_done) / static_cast<double>(bytes_);
    const double rate = seconds > 0 ? static_cast<double>(bytes_done) / seconds : 0.0;
    char eta[32] = "";
    if (rate > 0 && tensors_done < tensors_) {
      std::snprintf(eta, sizeof eta, " ETA %.0fs", static_cast<double>(bytes_ - bytes_done) / rate);
    }
    char text[256];
    std::snprintf(text, sizeof text, "%s %zu/%zu tensors  %s/%s  %s/s%s", alloy::tools::terminal_status::bar(fraction, 30).c_str(),
                  tensors_done, tensors_, human_bytes(static_cast<double>(bytes_done)).c_str(),
                  human_bytes(static_cast<double>(bytes_)).c_str(), human_bytes(rate).c_str(), eta);
    const bool done = tensors_done == tensors_;
    line_.show(text, done);
    if (done) line_.finish(/*keep=*/true);
  }

 private:
  using clock = std::chrono::steady_clock;
  std::size_t tensors_;
  std::size_t bytes_;
  alloy::tools::terminal_status line_;
  clock::time_point start_;
};

void print_plan(const alloy::tools::merge_job& job, const std::string& output, std::size_t shard_bytes) {
  const std::size_t merged = job.plan.merged_count();
  std::cout << "method: " << job.config.method << "\n";
  if (job.base != nullptr) std::cout << "base model: " << job.base->reference().text() << "\n";
  std::cout << "models:\n";
  for (const auto* model : job.models) {
    std::cout << "  " << model->reference().text() << " (" << model->files().shards().size() << " file"
              << (model->files().shards().size() == 1 ? "" : "s") << ", " << model->files().size() << " tensors)\n";
  }
  std::cout << "tensors: " << job.plan.tensors.size() << " (" << merged << " merged, " << job.plan.tensors.size() - merged
            << " copied)\n";
  for (const auto& module : job.plan.modules) {
    std::cout << "module " << module.name << ": " << module.tensor_count << (module.tensor_count == 1 ? " tensor (" : " tensors (")
              << module.rule << ")\n";
  }
  for (const auto& stack : job.plan.assembled_stacks) {
    std::cout << "layers: " << stack.layers << " of '" << stack.prefix << "' from slices\n";
  }
  if (job.vocabulary) {
    const auto& v = *job.vocabulary;
    std::cout << "vocabulary: " << v.tokens << " tokens" << (v.rows != v.tokens ? " (" + std::to_string(v.rows) + " rows, padded)" : "");
    if (v.keeps_donor_vocabulary) {
      std::cout << ", every model's as it is\n";
    } else {
      std::cout << ", " << job.vocabulary_tensors.size() << " embedding matrices laid out in its order\n";
    }
  }
  std::cout << "read: " << human_bytes(static_cast<double>(job.plan.input_bytes)) << "\n";
  const std::vector<std::size_t> shard_of = alloy::assign_shards(job.output_specs(), shard_bytes);
  const std::size_t shards = shard_of.empty() ? 1 : shard_of.back() + 1;
  std::cout << "write: " << output << ", " << human_bytes(static_cast<double>(job.plan.output_bytes)) << " in "
            << shards << " shard" << (shards > 1 ? "s" : "") << "\n";
  std::cout << "estimated peak memory: " << human_bytes(static_cast<double>(job.peak_bytes)) << " (tensor '"
            << job.peak_tensor << "')\n";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Merge safetensors checkpoints as a mergekit YAML config describes (alloy)."};
  app.footer(
      "Exit status: 0 success, 1 unexpected failure, 2 bad command line, 3 config error, 4 input error, "
      "5 output error, 6 GPU error, 130 interrupted. On failure no output folder is left. See docs/cli.md.");
  std::string config_path;
  std::string output;
  bool dry_run = false;
  int threads = 0;
  std::string shard_size = "5GB";
  std::string out_dtype_text;
  bool allow_overwrite = false;
  bool quiet = false;
  bool check_finite = false;
  std::string device = "cpu";
  app.add_option("CONFIG", config_path, "mergekit-style YAML config (merge_method, base_model, models, parameters, ...)")
      ->required();
  app.add_option("OUTPUT_DIR", output, "folder to write: sharded safetensors, index, config and tokenizer files")
      ->required();
  app.add_flag("--dry-run", dry_run, "read every header, check names, shapes, dtypes and parameters, print the plan; "
                                     "write nothing");
  app.add_option("--threads", threads, "threads for merging (default: every core, or OMP_NUM_THREADS)")
      ->check(CLI::PositiveNumber);
  app.add_option("--shard-size", shard_size, "largest output shard, e.g. 5GB (default), 500MB, 2GiB");
  app.add_option("--out-dtype", out_dtype_text, "output dtype for merged tensors: float32, float16 or bfloat16 "
                                                "(overrides the config's out_dtype and dtype)");
  app.add_flag("--allow-overwrite", allow_overwrite, "replace OUTPUT_DIR if it exists and is not empty");
  app.add_flag("--check-finite", check_finite, "stop at the first NaN or infinity in an input tensor or a merged "
                                               "one, naming the model, tensor and element (with --dry-run: check "
                                               "every input, which reads all the data)");
  app.add_flag("--quiet,-q", quiet, "print nothing but errors");
  app.add_option("--device", device, "where to merge: cpu, or cuda (needs a build with the CUDA backend)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? exit_success : exit_usage;
  }

  const auto usage_error = [](const std::string& message) {
    std::cerr << "alloy-merge: " << message << "\n";
    return exit_usage;
  };
  const std::optional<std::size_t> shard_bytes = parse_size(shard_size);
  if (!shard_bytes) return usage_error("--shard-size '" + shard_size + "' is not a size such as 5GB, 500MB or 2GiB");
  std::optional<alloy::dtype> out_dtype;
  if (!out_dtype_text.empty()) {
    out_dtype = alloy::parse_dtype(out_dtype_text);
    if (!out_dtype || !alloy::is_mergeable(*out_dtype)) {
      return usage_error("--out-dtype '" + out_dtype_text + "' is not one of float32, float16, bfloat16");
    }
  }
  const bool on_gpu = device == "cuda" || device.starts_with("cuda:");
  if (device != "cpu" && !on_gpu) return usage_error("--device '" + device + "' is not cpu, cuda or cuda:N");
#if defined(ALLOY_HAVE_CUDA_BACKEND)
  if (on_gpu) {
    int ordinal = 0;
    if (device.starts_with("cuda:")) {
      const std::string digits = device.substr(5);
      if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string::npos) {
        return usage_error("--device " + device + ": expected cuda or cuda:N with N a device number");
      }
      ordinal = std::stoi(digits);
    }
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || ordinal >= count) {
      std::cerr << "alloy-merge: GPU error: --device " << device << ": "
                << (status != cudaSuccess ? std::string("no usable CUDA device (") + cudaGetErrorString(status) + ")"
                                          : "only " + std::to_string(count) + " CUDA device(s) here")
                << "\n";
      return exit_device;
    }
    if (const cudaError_t set = cudaSetDevice(ordinal); set != cudaSuccess) {
      std::cerr << "alloy-merge: GPU error: selecting CUDA device " << ordinal << ": " << cudaGetErrorString(set) << "\n";
      return exit_device;
    }
  }
#else
  if (on_gpu) return usage_error("--device " + device + ": this alloy-merge was built without the CUDA backend; merge with --device cpu");
#endif

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const alloy::cpu_backend backend{.threads = threads};
  const auto started = std::chrono::steady_clock::now();
  using alloy::tools::failure_kind;
  try {
    alloy::tools::merge_config config = alloy::tools::in_stage(failure_kind::config, [&] {
      return alloy::tools::read_merge_config(config_path);
    });
    if (out_dtype) config.out_dtype = out_dtype;
    alloy::tools::in_stage(failure_kind::output, [&] {
      alloy::tools::check_output_spares_inputs(config, config_path, output);
    });
    const alloy::tools::merge_job job = alloy::tools::plan_merge(std::move(config), backend);
    if (dry_run) {
      alloy::tools::in_stage(failure_kind::output, [&] {
        namespace fs = std::filesystem;
        std::error_code ec;
        const auto status = fs::symlink_status(output, ec);
        if (fs::exists(status) && !allow_overwrite && !(fs::is_directory(status) && fs::is_empty(output, ec))) {
          alloy::fail(alloy::error_code::already_exists, "output ", output,
                              " exists and is not an empty folder (--allow-overwrite replaces it)");
        }
      });
      if (!quiet) print_plan(job, output, *shard_bytes);
      if (check_finite) {
        progress_bar progress(job.plan.tensors.size(), job.plan.output_bytes, !quiet && ::isatty(STDERR_FILENO) != 0);
        alloy::tools::check_inputs_finite(job, backend, [&](std::size_t done, std::size_t bytes) { progress.update(done, bytes); });
        if (!quiet) std::cout << "check-finite: every input tensor is finite\n";
      }
      if (!quiet) std::cout << "dry run: nothing written\n";
      return exit_success;
    }
    progress_bar progress(job.plan.tensors.size(), job.plan.output_bytes, !quiet && ::isatty(STDERR_FILENO) != 0);
    alloy::tools::write_options options{.output = output,
                                        .max_shard_bytes = *shard_bytes,
                                        .allow_overwrite = allow_overwrite,
                                        .progress = [&](std::size_t done, std::size_t bytes) { progress.update(done, bytes); },
                                        .check_finite = check_finite};
#if defined(ALLOY_HAVE_CUDA_BACKEND)
    if (on_gpu) {
      alloy::tools::run_merge_on_gpu(job, backend, options);
    } else {
      alloy::tools::run_merge(job, backend, options);
    }
#else
    alloy::tools::run_merge(job, backend, options);
#endif
    if (!quiet) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      std::printf("alloy-merge: %s merged %zu tensors (%s) into %s in %.1f s\n", job.config.method.c_str(),
                  job.plan.tensors.size(), human_bytes(static_cast<double>(job.plan.output_bytes)).c_str(), output.c_str(), seconds);
    }
    return exit_success;
  } catch (const interrupted&) {
    std::cerr << "\nalloy-merge: interrupted; nothing was written\n";
    return exit_interrupted;
  } catch (const alloy::tools::stage_error& e) {
    static constexpr const char* labels[] = {"config error", "input error", "output error", "GPU error"};
    std::cerr << "alloy-merge: " << labels[static_cast<int>(e.kind())] << ": " << e.what() << "\n";
    switch (e.kind()) {
      case failure_kind::config: return exit_config;
      case failure_kind::input: return exit_input;
      case failure_kind::output: return exit_output;
      case failure_kind::device: return exit_device;
    }
    return exit_unexpected;
  } catch (const std::exception& e) {
    std::cerr << "alloy-merge: unexpected error: " << e.what() << "\n";
    return exit_unexpected;
  }
}
