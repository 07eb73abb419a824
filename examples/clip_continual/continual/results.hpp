#pragma once
// What a run records per method and task order (a "cell"), as checkpoints and results.json hold it.

#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace alloy_clip {

// One method on one task order: the accuracy rows so far and the time spent.
struct cell_result {
  std::string method;
  double p = 0;  // PAM's p (methods with PAM)
  std::size_t order = 0;
  std::vector<std::size_t> task_order;       // indices into continual_config::tasks
  std::vector<std::vector<double>> matrix;  // [after task t][task learned i-th]
  std::vector<double> heldout;               // after each task
  std::vector<double> train_s, merge_s;      // per task
  std::vector<double> reset_fraction;        // per task: PAM's resets / entries inside G's top-p masks, over its passes
  std::vector<double> resident_mb;           // per task: the process's resident memory after it (0 where unknown)
  std::vector<double> rank_kept;             // per task, methods merging B A: the share of the merged update G's rank-r factors keep
  std::size_t tasks_total = 0;
  nlohmann::json merger_state;  // what the merger needs besides G to resume (OPCM: the task norms and scale)

  [[nodiscard]] bool complete() const { return tasks_total > 0 && matrix.size() == tasks_total; }

  [[nodiscard]] nlohmann::json to_json() const {
    return {{"method", method}, {"p", p},           {"order", order},     {"task_order", task_order}, {"matrix", matrix},
            {"heldout", heldout}, {"train_s", train_s}, {"merge_s", merge_s}, {"reset_fraction", reset_fraction},
            {"resident_mb", resident_mb}, {"rank_kept", rank_kept}, {"tasks_total", tasks_total}, {"merger_state", merger_state}};
  }
  static cell_result from_json(const nlohmann::json& j) {
    cell_result c;
    c.method = j.at("method").get<std::string>();
    c.p = j.at("p").get<double>();
    c.order = j.at("order").get<std::size_t>();
    c.task_order = j.at("task_order").get<std::vector<std::size_t>>();
    c.matrix = j.at("matrix").get<std::vector<std::vector<double>>>();
    c.heldout = j.at("heldout").get<std::vector<double>>();
    c.train_s = j.at("train_s").get<std::vector<double>>();
    c.merge_s = j.at("merge_s").get<std::vector<double>>();
    c.reset_fraction = j.value("reset_fraction", std::vector<double>{});
    c.resident_mb = j.value("resident_mb", std::vector<double>(c.train_s.size(), 0.0));
    c.rank_kept = j.value("rank_kept", std::vector<double>{});
    c.tasks_total = j.at("tasks_total").get<std::size_t>();
    c.merger_state = j.value("merger_state", nlohmann::json{});
    return c;
  }
};

// The process's resident memory now, in MB (Linux: /proc/self/statm; 0 elsewhere).
inline double resident_megabytes() {
  std::ifstream statm("/proc/self/statm");
  double pages_total = 0, pages_resident = 0;
  if (!(statm >> pages_total >> pages_resident)) return 0;
  return pages_resident * static_cast<double>(::sysconf(_SC_PAGESIZE)) / (1024.0 * 1024.0);
}

// PAM's p as it appears in checkpoint names and the report ("0.5").
inline std::string format_p(double p) {
  char text[16];
  std::snprintf(text, sizeof text, "%.2g", p);
  return text;
}

}  // namespace alloy_clip
