#pragma once
// The continual-learning run of the CLIP example: LoRA continual learning as in Sokar et al. (2025),
// with every merge, alignment and regularizer coming from alloy's headers.
//
// For one method and one task order (a "cell"): one global LoRA G starts from the order's
// initial factors G0 (A random, B zero). For each task, a copy T of G is fine-tuned on that task
// alone (AdamW, cross-entropy of the image embedding against the task's class embeddings);
// PAM, where the method has it, aligns T with G every K steps; the copy is merged back
// (alloy::continual_merger: running mean, TIES or MagMax; or OPCM or DOP; the factors A and B, or
// their products B A taken back to the LoRA's rank); G is then tested on
// every task and on the held-out one. After each task the cell's state (its accuracy rows and G or T) is saved, so
// that an interrupted run resumes at the next task with the same result.
//
// Data parallel over N processes (alloy::torch_adapter::data_parallel): every rank trains on its
// shard of each global batch and the gradients are summed, so that every rank takes the same
// optimizer step; PAM's masks and resets are then computed on every rank from identical bits (the
// same G, the same T: cheaper than a broadcast per alignment, and checked by a fingerprint of T at
// each task's end). What is not a pure function of those bits is done once, on rank 0, and
// broadcast: G0, the merge at each task's end, and what is read back from the checkpoints, which
// rank 0 alone writes (so a run resumes with any number of processes). Test sets are split by
// whole batches, so each image's embedding is what one process computes, and the correct counts
// summed.

#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/alloy.hpp"
#include "alloy/torch.hpp"
#include "../clip/pretrain.hpp"
#include "config.hpp"
#include "global_merger.hpp"
#include "protocol.hpp"
#include "results.hpp"
#include "terminal_status.hpp"

namespace alloy_clip {

// One task's data, ready to train and test on.
struct continual_task {
  std::string name;
  image_dataset train, test;
  image_transform transform;
  ::torch::Tensor classes;  // [classes, projection_dim], normalised (the text tower is frozen)
};

// The training progress on a terminal: the cell, task and epoch, the steps done, the loss.
class progress_bar {
 public:
  explicit progress_bar(bool enabled) : line_(enabled) {}
  void update(const std::string& label, std::int64_t done, std::int64_t total, double loss) {
    if (!line_.enabled() || total <= 0) return;
    char text[256];
    std::snprintf(text, sizeof text, "%-60s %s %3d%% loss %.3f", label.c_str(),
                  alloy::tools::terminal_status::bar(static_cast<double>(done) / static_cast<double>(total), 24).c_str(),
                  static_cast<int>(100 * done / total), loss);
    line_.show(text, done == total);
  }
  void finish() { line_.finish(/*keep=*/false); }

 private:
  alloy::tools::terminal_status line_;
};

class continual_runner {
 public:
  using log_function = std::function<void(const std::string&)>;

  // `group`: the processes training together (one by default); `log` and `show_progress` are for
  // the caller to enable on one rank only.
  continual_runner(clip_bundle& base, continual_config config, const std::filesystem::path& datasets_dir, ::torch::Device device,
                   std::filesystem::path checkpoint_dir, log_function log, bool show_progress,
                   const alloy::torch_adapter::data_parallel& group)
      : base_(base),
        config_(std::move(config)),
        device_(device),
        group_(group),
        checkpoints_(std::move(checkpoint_dir)),
        log_(std::move(log)),
        progress_(show_progress) {
    model().to(device_);
    model().add_lora({config_.lora_rank, config_.lora_alpha, 0.0}, config_.lora_targets, /*text_tower=*/false,
                     /*vision_tower=*/true);
    model().to(device_);  // (the new factors)
    split_options split;
    split.seed = config_.seed;
    split.max_train = config_.max_train;
    std::vector<std::string> names = config_.tasks;
    names.push_back(config_.heldout);
    for (const auto& name : names) {
      const image_dataset data = load_dataset(name, datasets_dir);
      dataset_splits parts = split_dataset(data, split);
      continual_task task;
      task.name = name;
      task.train = parts.train;
      task.test = parts.test.size() > config_.max_test
                      ? parts.test.subset(::torch::arange(config_.max_test), parts.test.name)
                      : parts.test;
      task.transform = base_.transform_for(parts.train);
      task.classes = class_embeddings(base_.model, base_.tokenizer, task.test, device_);
      tasks_.push_back(std::move(task));
    }
    // The base model's accuracy on every task (LoRA with B = 0 changes nothing).
    for (auto& task : tasks_) zero_shot_.push_back(accuracy(task));
  }

  [[nodiscard]] const std::vector<continual_task>& tasks() const { return tasks_; }
  [[nodiscard]] const std::vector<double>& zero_shot_accuracy() const { return zero_shot_; }  // tasks, then held-out
  [[nodiscard]] const continual_config& config() const { return config_; }

  // Runs (or resumes, or reads back) one method on one order.
  cell_result run(const method_spec& method, std::size_t order_index, const std::vector<std::size_t>& order, double p) {
    const std::string id = method.key + (method.pam ? "-p" + format_p(p) : "") + "-order" + std::to_string(order_index);
    const auto state_file = checkpoints_ / (id + ".json");
    // G (or T) after k tasks: a file per k, so that a state file never names weights written later.
    const auto weights_file = [&](std::size_t k) { return checkpoints_ / (id + "-after" + std::to_string(k) + ".safetensors"); };
    cell_result cell;
    std::string saved;  // the state file, which only rank 0 reads
    if (group_.is_root() && std::filesystem::exists(state_file)) {
      std::ifstream in(state_file);
      std::ostringstream text;
      text << in.rdbuf();
      saved = text.str();
    }
    group_.broadcast(saved);
    if (!saved.empty()) {
      cell = cell_result::from_json(nlohmann::json::parse(saved));
      if (cell.task_order != order) {
        alloy::fail(alloy::error_code::invalid_argument, state_file.string(),
                            ": a checkpoint of another task order (the run's settings changed; remove the run folder)");
      }
      if (cell.complete()) return cell;
      if (group_.is_root()) std::fprintf(stderr, "%s: resuming after task %zu\n", id.c_str(), cell.matrix.size());  // (even with --quiet)
    } else {
      cell.method = method.key;
      cell.p = p;
      cell.order = order_index;
      cell.task_order = order;
      cell.tasks_total = order.size();
    }
    const std::vector<double> baseline = baseline_for(order);
    if (method.kind == method_kind::zero_shot) {
      cell.matrix.assign(order.size(), baseline);
      cell.heldout.assign(order.size(), zero_shot_.back());
      cell.train_s.assign(order.size(), 0.0);
      cell.merge_s.assign(order.size(), 0.0);
      cell.reset_fraction.assign(order.size(), 0.0);
      cell.resident_mb.assign(order.size(), resident_megabytes());
      save(cell, state_file, weights_file(order.size()), nullptr);
      return cell;
    }

    // G0: the order's initial LoRA factors, the same for every method of the order.
    const alloy::memory_store initial = initial_factors(order_index);
    std::optional<global_merger> merger;  // rank 0's: the merge is done once
    alloy::memory_store global = initial;  // merged: G on every rank, a copy of the merger's
    alloy::memory_store carried = initial;  // sequential: T carried over; independent: unused
    if (method.kind == method_kind::merged) {
      if (group_.is_root()) {
        std::optional<alloy::memory_store> resumed;
        if (!cell.matrix.empty()) resumed = load_weights(weights_file(cell.matrix.size()));
        merger.emplace(method, config_, merge_options(method), initial, std::move(resumed), cell.matrix.size(), cell.merger_state,
                       device_);
        global = merger->global();
      }
      group_.broadcast(global);
    } else if (method.kind == method_kind::sequential && !cell.matrix.empty()) {
      if (group_.is_root()) carried = load_weights(weights_file(cell.matrix.size()));
      group_.broadcast(carried);
    }

    std::vector<double> own;  // independent: each task's accuracy with its own LoRA
    for (std::size_t t = 0; t < cell.matrix.size() && method.kind == method_kind::independent; ++t) own.push_back(cell.matrix[t][t]);

    for (std::size_t t = cell.matrix.size(); t < order.size(); ++t) {
      continual_task& task = tasks_[order[t]];
      double merge_seconds = 0;
      // Where training starts.
      const alloy::memory_store& start = method.kind == method_kind::merged ? global
                                         : method.kind == method_kind::sequential ? carried
                                                                                  : initial;
      alloy::torch_adapter::assign(*base_.model, start);
      std::optional<alloy::torch_adapter::pam_aligner> aligner;
      std::optional<alloy::torch_adapter::alignment_target> target;
      {
        const auto started = clock::now();
        if (method.pam) {
          aligner.emplace(alloy::pam_options{p, static_cast<std::size_t>(config_.align_every), *method.pam});
          aligner->set_global(global, device_);
        }
        if (method.regularizer != regularizer_kind::none) target.emplace(global, config_.p, device_);
        merge_seconds += seconds_since(started);
      }
      const std::string label = id + "  task " + std::to_string(t + 1) + "/" + std::to_string(order.size()) + " " + task.name;
      const auto train_started = clock::now();
      double reset_fraction = 0;
      merge_seconds += train(task, label, aligner ? &*aligner : nullptr, target ? &*target : nullptr, method.regularizer,
                             reset_fraction);
      const double train_seconds = seconds_since(train_started) - merge_seconds;

      // (A host copy: the merger reads host memory, and the LoRA factors are small on any device.)
      const alloy::memory_store trained = alloy::torch_adapter::snapshot(model().trainable_parameters());
      group_.check_same(alloy::torch_adapter::fingerprint(trainable_tensors()), "the LoRA factors trained on " + task.name);
      std::vector<double> row;
      if (method.kind == method_kind::merged) {
        const auto started = clock::now();
        if (group_.is_root()) {
          merger->end_task(trained);
          cell.merger_state = merger->state();
          if (method.merge_products) cell.rank_kept.push_back(merger->rank_kept());
          global = merger->global();
        }
        group_.broadcast(global);
        alloy::torch_adapter::assign(*base_.model, global);
        merge_seconds += seconds_since(started);
        row = evaluate_all(order);
      } else if (method.kind == method_kind::sequential) {
        carried = trained;
        row = evaluate_all(order);
      } else {  // independent: this task with its own LoRA; the others with theirs, or the base before they are learned
        own.push_back(accuracy(task));
        row = baseline;
        for (std::size_t i = 0; i <= t; ++i) row[i] = own[i];
      }
      if (method.kind == method_kind::independent) {
        cell.heldout.push_back(zero_shot_.back());  // no LoRA was trained for it: the base model
      } else {
        cell.heldout.push_back(row.back());
        row.pop_back();  // (evaluate_all appends the held-out task)
      }
      cell.matrix.push_back(row);
      cell.train_s.push_back(train_seconds);
      cell.merge_s.push_back(merge_seconds);
      cell.reset_fraction.push_back(reset_fraction);
      cell.resident_mb.push_back(resident_megabytes());
      // (Merged: the merger's checkpoint, G and what else it needs to resume; rank 0 writes it.)
      const alloy::memory_store merged_checkpoint = merger ? merger->checkpoint() : alloy::memory_store{};
      const alloy::memory_store* weights = method.kind == method_kind::merged ? &merged_checkpoint
                                           : method.kind == method_kind::sequential ? &carried
                                                                                    : nullptr;
      save(cell, state_file, weights_file(t + 1), weights);
      interruption_point();
      if (group_.is_root()) std::filesystem::remove(weights_file(t));  // (the state now names the newer weights)
      char line[256];
      std::snprintf(line, sizeof line, "%s  task %zu/%zu %-24s acc %5.1f%% on it, mean %5.1f%% on the tasks so far (%.1f s + %.3f s merge and alignment)",
                    id.c_str(), t + 1, order.size(), task.name.c_str(), 100.0 * row[t], 100.0 * mean_prefix(row, t + 1),
                    train_seconds, merge_seconds);
      log_(line);
    }
    return cell;
  }

 private:
  using clock = std::chrono::steady_clock;
  static double seconds_since(clock::time_point t) { return std::chrono::duration<double>(clock::now() - t).count(); }
  static double mean_prefix(const std::vector<double>& v, std::size_t n) {
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += v[i];
    return s / static_cast<double>(n);
  }

  clip_model_impl& model() { return *base_.model; }
  std::vector<::torch::Tensor> trainable_tensors() {
    std::vector<::torch::Tensor> tensors;
    for (auto& item : model().trainable_parameters()) tensors.push_back(item.second);
    return tensors;
  }

  std::vector<double> baseline_for(const std::vector<std::size_t>& order) const {
    std::vector<double> b;
    for (const auto i : order) b.push_back(zero_shot_[i]);
    return b;
  }

  // How the method merges T into G, from its description and the run's settings; a policy comes
  // from alloy's registry with its defaults (TIES: sum election, normalised; MagMax: lambda 1).
  alloy::continual_options merge_options(const method_spec& method) const {
    alloy::continual_options options;
    options.merge_rule = method.merge;
    if (method.merge == alloy::continual_rule::running_mean && config_.merge_weight > 0) {
      options.merge_rule = alloy::continual_rule::fixed_weight;
      options.fixed_weight = config_.merge_weight;
    }
    if (method.merge == alloy::continual_rule::policy) {
      const alloy::method_definition& definition = alloy::find_merge_method(method.merge_method);
      options.policy = definition.make(definition.defaults());
      options.policy_parameters.density = config_.ties_density;  // (read by TIES only)
    }
    return options;
  }

  // The LoRA factors of order k: A as torch.nn.Linear initialises it, from a seed of the order; B zero.
  alloy::memory_store initial_factors(std::size_t order_index) {
    ::torch::manual_seed(config_.seed * 1000 + order_index);
    ::torch::NoGradGuard no_grad;
    for (auto& [name, tensor] : model().trainable_parameters()) {
      if (name.find("lora_A") != std::string::npos) {
        ::torch::nn::init::kaiming_uniform_(tensor, std::sqrt(5.0));
      } else {
        tensor.zero_();
      }
    }
    alloy::memory_store factors = alloy::torch_adapter::snapshot(model().trainable_parameters());
    group_.broadcast(factors);  // (rank 0's draw: the same on every rank whatever their generators)
    return factors;
  }

  // Trains the model's LoRA on one task; returns the seconds spent in alignment and regularizers.
  double train(continual_task& task, const std::string& label, alloy::torch_adapter::pam_aligner* aligner,
               const alloy::torch_adapter::alignment_target* target, regularizer_kind regularizer, double& reset_fraction) {
    std::size_t reset = 0, considered = 0;
    const std::vector<::torch::Tensor> parameters = trainable_tensors();
    ::torch::optim::AdamW optimizer(parameters, ::torch::optim::AdamWOptions(config_.learning_rate).weight_decay(0.0));
    model().train();
    double overhead = 0;
    const std::int64_t n = task.train.size();
    const std::int64_t steps = config_.epochs * ((n + config_.batch - 1) / config_.batch);
    std::int64_t step = 0;
    for (std::int64_t epoch = 0; epoch < config_.epochs; ++epoch) {
      const auto order = seeded_permutation(n, config_.seed * 31337u + alloy::fnv1a64(task.name) % 100003u +
                                                   static_cast<std::uint64_t>(epoch));
      double loss_sum = 0;
      std::int64_t seen = 0;
      for (std::int64_t from = 0; from < n; from += config_.batch) {
        const std::int64_t to = std::min(n, from + config_.batch);
        // This rank's shard of the global batch; its mean loss weighted by the shard's share, so
        // that the gradients summed over the ranks are the whole batch's (the regularizer, the
        // same on every rank, divided by their number for the same reason).
        const auto [begin, end] = group_.shard(to - from);
        ::torch::Tensor total;
        double loss_value = 0;
        if (end > begin) {
          const ::torch::Tensor index = ::torch::tensor(
              std::vector<std::int64_t>(order.begin() + from + begin, order.begin() + from + end), ::torch::kInt64);
          const ::torch::Tensor pixels = task.transform(task.train.images.index_select(0, index), device_);
          const ::torch::Tensor labels = task.train.labels.index_select(0, index).to(device_);
          ::torch::Tensor loss;
          {
            autocast_scope autocast(device_);
            namespace F = ::torch::nn::functional;
            const ::torch::Tensor features = F::normalize(model().image_features(pixels).to(::torch::kFloat32), F::NormalizeFuncOptions().dim(-1));
            const ::torch::Tensor logits = model().logit_scale.exp().detach() * ::torch::matmul(features, task.classes.t());
            loss = F::cross_entropy(logits, labels);
          }
          total = loss * (static_cast<double>(end - begin) / static_cast<double>(to - from));
          loss_value = loss.item<double>();
        }
        if (target != nullptr) {
          const auto started = clock::now();
          ::torch::Tensor penalty = regularizer == regularizer_kind::l2_pull
                                        ? alloy::torch_adapter::l2_pull(model(), *target, config_.l2_strength)
                                        : alloy::torch_adapter::sign_agreement(model(), *target, config_.sign_strength);
          if (group_.size() > 1) penalty = penalty / static_cast<double>(group_.size());
          total = total.defined() ? total + penalty : penalty;
          overhead += seconds_since(started);
        }
        optimizer.zero_grad();
        if (total.defined()) total.backward();
        group_.sum_gradients(parameters);
        optimizer.step();
        if (aligner != nullptr) {
          const auto started = clock::now();
          const alloy::pam_report report = aligner->step(model(), optimizer);
          reset += report.total_reset;
          considered += report.total_considered;
          overhead += seconds_since(started);
        }
        loss_sum += loss_value * static_cast<double>(end - begin);  // (this rank's shards: the progress shown)
        seen += end - begin;
        ++step;
        progress_.update(label + "  epoch " + std::to_string(epoch + 1) + "/" + std::to_string(config_.epochs), step, steps,
                         seen > 0 ? loss_sum / static_cast<double>(seen) : 0.0);
      }
    }
    progress_.finish();
    reset_fraction = considered == 0 ? 0.0 : static_cast<double>(reset) / static_cast<double>(considered);
    return overhead;
  }

  // The share of the task's test images classified right; each rank embeds its whole batches.
  double accuracy(continual_task& task) {
    constexpr std::int64_t batch = 512;
    const std::int64_t n = task.test.size();
    const auto [first, last] = group_.shard((n + batch - 1) / batch);
    const std::int64_t from = std::min(n, first * batch), to = std::min(n, last * batch);
    std::int64_t correct = 0;
    if (to > from) {
      const image_dataset part = from == 0 && to == n ? task.test : task.test.subset(::torch::arange(from, to));
      const ::torch::Tensor images = image_embeddings(base_.model, part, task.transform, device_, batch);
      const ::torch::Tensor predicted = ::torch::matmul(images, task.classes.t()).argmax(1).cpu();
      correct = predicted.eq(part.labels).sum().item<std::int64_t>();
    }
    correct = group_.sum({correct})[0];
    return static_cast<double>(correct) / static_cast<double>(n);
  }

  // Accuracy on the tasks in `order`, then on the held-out task.
  std::vector<double> evaluate_all(const std::vector<std::size_t>& order) {
    std::vector<double> row;
    for (const auto i : order) row.push_back(accuracy(tasks_[i]));
    row.push_back(accuracy(tasks_.back()));
    return row;
  }

  // For the resume test: ALLOY_CLIP_STOP_AFTER_TASKS=N stops the process after N trained tasks, as
  // an interruption would (after a checkpoint).
  // Every rank stops, once rank 0's checkpoint is written.
  void interruption_point() {
    static const char* limit = std::getenv("ALLOY_CLIP_STOP_AFTER_TASKS");
    if (limit != nullptr && ++tasks_trained_ >= std::strtol(limit, nullptr, 10)) {
      group_.barrier();
      if (group_.is_root()) std::fprintf(stderr, "clip_continual: stopped after %ld tasks (ALLOY_CLIP_STOP_AFTER_TASKS)\n", tasks_trained_);
      std::exit(75);
    }
  }

  static alloy::memory_store load_weights(const std::filesystem::path& file) {
    return alloy::copy_store(alloy::safetensors_store::open(file));
  }

  // Rank 0 writes the checkpoints.
  void save(const cell_result& cell, const std::filesystem::path& state_file, const std::filesystem::path& weights_file,
            const alloy::memory_store* weights) const {
    if (!group_.is_root()) return;
    std::filesystem::create_directories(state_file.parent_path());
    // The weights first: a state that names task t always has the weights after task t beside it.
    if (weights != nullptr) alloy::save_safetensors(weights_file, *weights, {}, /*replace=*/true);
    alloy::write_file_atomically(state_file, cell.to_json().dump() + "\n");
  }

  clip_bundle& base_;
  continual_config config_;
  ::torch::Device device_;
  const alloy::torch_adapter::data_parallel& group_;
  std::filesystem::path checkpoints_;
  log_function log_;
  progress_bar progress_;
  std::vector<continual_task> tasks_;  // config tasks, then the held-out one
  std::vector<double> zero_shot_;
  long tasks_trained_ = 0;
};

}  // namespace alloy_clip
