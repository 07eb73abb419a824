#pragma once
// What the three drop-in programs share besides alloy: their command line and the table that puts
// "fine-tuning only" next to "with alloy". (The training loops are each ecosystem's own.)

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "../common/mnist_tasks.hpp"

namespace alloy_examples {

// What a run adds to the ordinary loop: nothing, alloy's merging, or merging with PAM alignment.
enum class method { fine_tuning, merging, merging_with_pam };

struct dropin_options {
  const char* datasets = nullptr;
  std::string protocol = "split";
  std::string optimizer = "sgd";  // dropin_torch only: sgd (momentum 0.9) or adam
  std::size_t tasks = 5;  // permuted only; split has five
  int epochs = 2;
  unsigned seed = 1;
};

constexpr const char* dropin_usage =
    "usage: %s [DATASETS_DIR] [--protocol split|permuted] [--tasks N] [--epochs N] [--seed N]\n"
    "          [--optimizer sgd|adam]   (dropin_torch)\n";

inline dropin_options parse_dropin_options(const char* program, int argc, char** argv) {
  dropin_options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--protocol" && has_value) {
      options.protocol = argv[++i];
    } else if (arg == "--optimizer" && has_value) {
      options.optimizer = argv[++i];
    } else if (arg == "--tasks" && has_value) {
      options.tasks = static_cast<std::size_t>(std::strtoul(argv[++i], nullptr, 10));
    } else if (arg == "--epochs" && has_value) {
      options.epochs = std::atoi(argv[++i]);
    } else if (arg == "--seed" && has_value) {
      options.seed = static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10));
    } else if (arg == "--help" || arg == "-h" || arg.rfind("--", 0) == 0 || options.datasets != nullptr) {
      std::fprintf(arg == "--help" || arg == "-h" ? stdout : stderr, dropin_usage, program);
      std::exit(arg == "--help" || arg == "-h" ? 0 : 2);
    } else {
      options.datasets = argv[i];
    }
  }
  if (options.epochs < 1 || options.tasks < 2 || (options.protocol != "permuted" && options.protocol != "split") ||
      (options.optimizer != "sgd" && options.optimizer != "adam")) {
    std::fprintf(stderr, "%s: --epochs must be at least 1, --tasks at least 2, --protocol split or permuted, "
                 "--optimizer sgd or adam\n", program);
    std::exit(2);
  }
  return options;
}

// accuracy[k][j]: accuracy (%) on task j after learning task k (j <= k).
using accuracy_rows = std::vector<std::vector<double>>;

inline double mean_of(const std::vector<double>& row) {
  double total = 0;
  for (double v : row) total += v;
  return row.empty() ? 0.0 : total / static_cast<double>(row.size());
}

// Loads the tasks the options ask for, from the datasets folder.
inline task_sequence load_tasks(const dropin_options& options) {
  return make_tasks(mnist_split::load(datasets_dir(options.datasets) / "mnist.safetensors"), options.protocol,
                    options.tasks, options.seed);
}

// The two full tables side by side, then the mean accuracy after the last task of all three runs.
template <class Run>
void print_comparison(Run&& run) {
  const accuracy_rows plain = run(method::fine_tuning);
  const accuracy_rows merging = run(method::merging);
  const accuracy_rows with_alloy = run(method::merging_with_pam);
  const std::size_t tasks = plain.size();
  // (snprintf rather than string concatenation: GCC 12 warns falsely on the latter at -O3.)
  std::string header;
  char cell[32];
  for (std::size_t j = 0; j < tasks; ++j) {
    std::snprintf(cell, sizeof cell, "    t%zu", j + 1);
    header += cell;
  }
  header += "  mean";
  std::printf("accuracy (%%) on each task seen, 10-way, no task identity\n");
  std::printf("%-6s %-*s | %s\n", "", static_cast<int>(header.size()), "fine-tuning only", "with alloy (PAM + merging)");
  std::printf("%-6s %s | %s\n", "after", header.c_str(), header.c_str());
  const auto cells = [&](const std::vector<double>& row) {
    std::string text;
    for (std::size_t j = 0; j < tasks; ++j) {
      if (j < row.size()) std::snprintf(cell, sizeof cell, " %5.1f", row[j]);
      else std::snprintf(cell, sizeof cell, " %5s", "");
      text += cell;
    }
    std::snprintf(cell, sizeof cell, " %5.1f", mean_of(row));
    text += cell;
    return text;
  };
  for (std::size_t k = 0; k < tasks; ++k) {
    std::printf("t%-5zu %s | %s\n", k + 1, cells(plain[k]).c_str(), cells(with_alloy[k]).c_str());
  }
  std::printf("mean accuracy after the last task: fine-tuning only %.1f%%, alloy merging %.1f%%, "
              "alloy merging + PAM %.1f%%\n", mean_of(plain.back()), mean_of(merging.back()), mean_of(with_alloy.back()));
}

// A drop-in program's main: parses the options, loads the tasks, runs the three methods and prints
// the comparison. `describe(options)` names the model and optimizer; `run(tasks, options, method)`
// is the program's own training loop.
template <class Describe, class Run>
int run_dropin(const char* program, int argc, char** argv, Describe&& describe, Run&& run) {
  const dropin_options options = parse_dropin_options(program, argc, argv);
  try {
    const task_sequence tasks = load_tasks(options);
    std::printf("%s: %s, %s, %d epoch(s) per task\n", program, tasks.description.c_str(), describe(options).c_str(),
                options.epochs);
    print_comparison([&](method how) { return run(tasks, options, how); });
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return 1;
  }
}

}  // namespace alloy_examples
