#pragma once
// What a continual-learning run writes: results.json (every figure, mean and standard deviation
// over task orders), report.md (the tables), and plots drawn by gnuplot (SVG) when it is installed.

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/store/file_io.hpp"
#include "protocol.hpp"
#include "results.hpp"

namespace alloy_clip {

struct method_summary {
  std::string key;
  double p = 0;
  std::vector<double> acc, bwt, fwt, plasticity, heldout;  // one per order
  std::vector<std::vector<double>> matrix;                  // mean over orders, by position
  double train_s = 0, merge_s = 0;                          // mean per task
  double reset_fraction = 0;                                // PAM: mean share of G's top-p entries reset per pass

  static method_summary of(const std::vector<cell_result>& cells, const std::vector<double>& zero_shot) {
    method_summary s;
    s.key = cells.front().method;
    s.p = cells.front().p;
    const std::size_t n = cells.front().task_order.size();
    s.matrix.assign(n, std::vector<double>(n, 0.0));
    double train = 0, merge = 0, resets = 0;
    std::size_t reset_count = 0;
    for (const auto& c : cells) {
      std::vector<double> baseline;
      for (const auto i : c.task_order) baseline.push_back(zero_shot[i]);
      const sequence_metrics m = metrics_of(c.matrix, baseline);
      s.acc.push_back(m.acc);
      s.bwt.push_back(m.bwt);
      s.fwt.push_back(m.fwt);
      s.plasticity.push_back(m.plasticity);
      s.heldout.push_back(c.heldout.back());
      for (const double r : c.reset_fraction) {
        resets += r;
        ++reset_count;
      }
      for (std::size_t t = 0; t < n; ++t) {
        for (std::size_t i = 0; i < n; ++i) s.matrix[t][i] += c.matrix[t][i] / static_cast<double>(cells.size());
        train += c.train_s[t];
        merge += c.merge_s[t];
      }
    }
    s.train_s = train / static_cast<double>(n * cells.size());
    s.merge_s = merge / static_cast<double>(n * cells.size());
    s.reset_fraction = reset_count == 0 ? 0.0 : resets / static_cast<double>(reset_count);
    return s;
  }

  [[nodiscard]] nlohmann::json to_json() const {
    return {{"acc", mean_of(acc)},
            {"acc_std", std_of(acc)},
            {"bwt", mean_of(bwt)},
            {"bwt_std", std_of(bwt)},
            {"fwt", mean_of(fwt)},
            {"fwt_std", std_of(fwt)},
            {"plasticity", mean_of(plasticity)},
            {"heldout", mean_of(heldout)},
            {"heldout_std", std_of(heldout)},
            {"matrix", matrix},
            {"train_s", train_s},
            {"merge_s", merge_s},
            {"reset_fraction", reset_fraction},
            {"per_order", {{"acc", acc}, {"bwt", bwt}, {"fwt", fwt}, {"heldout", heldout}}}};
  }
};

struct run_summary {
  nlohmann::json config;
  std::vector<std::string> task_names;  // config order, then the held-out task
  std::vector<double> zero_shot;        // per task, then the held-out task
  std::vector<std::vector<std::size_t>> orders;
  std::vector<method_summary> methods;  // in the order run
  std::vector<method_summary> p_sweep;  // PAM at each p of the sweep
  std::string device;
  double seconds = 0;

  [[nodiscard]] nlohmann::json to_json() const {
    nlohmann::json methods_json = nlohmann::json::object();
    for (const auto& m : methods) methods_json[m.key] = m.to_json();
    nlohmann::json sweep = nlohmann::json::array();
    for (const auto& m : p_sweep) {
      nlohmann::json j = m.to_json();
      j["p"] = m.p;
      sweep.push_back(j);
    }
    nlohmann::json zs = nlohmann::json::object();
    for (std::size_t i = 0; i < task_names.size(); ++i) zs[task_names[i]] = zero_shot[i];
    nlohmann::json order_names = nlohmann::json::array();
    for (const auto& order : orders) {
      nlohmann::json names = nlohmann::json::array();
      for (const auto i : order) names.push_back(task_names[i]);
      order_names.push_back(names);
    }
    nlohmann::json c = config;
    c["device"] = device;
    c["task_orders"] = order_names;
    c["zero_shot_per_task"] = zs;
    c["seconds"] = seconds;
    return {{"config", c}, {"methods", methods_json}, {"p_sweep", sweep}};
  }
};

namespace detail {

inline std::string pct(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", 100.0 * x);
  return text;
}

inline std::string pct_pm(const std::vector<double>& v) {
  char text[48];
  std::snprintf(text, sizeof text, "%.1f ± %.1f", 100.0 * mean_of(v), 100.0 * std_of(v));
  return text;
}

inline bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

// The plots' data files and gnuplot scripts; returns the SVG files drawn.
inline std::vector<std::string> draw_plots(const run_summary& run, const std::filesystem::path& dir) {
  std::vector<std::string> drawn;
  const auto plots = dir / "plots";
  std::filesystem::create_directories(plots);
  const std::size_t n = run.orders.front().size();
  const std::size_t m = run.methods.size();
  const std::size_t columns = std::min<std::size_t>(m, 3), rows = (m + columns - 1) / columns;

  // Accuracy matrices (mean over orders), one panel per method.
  {
    std::ostringstream data, script;
    for (const auto& method : run.methods) {
      for (std::size_t t = 0; t < n; ++t) {
        for (std::size_t i = 0; i < n; ++i) data << t + 1 << ' ' << i + 1 << ' ' << 100.0 * method.matrix[t][i] << '\n';
      }
      data << "\n\n";
    }
    alloy::write_file_atomically(plots / "matrices.dat", data.str());
    script << "set terminal svg size " << 360 * columns << "," << 330 * rows << " font 'sans,11'\n"
           << "set output 'matrices.svg'\nset multiplot layout " << rows << "," << columns << "\n"
           << "set cbrange [0:100]\nset palette defined (0 'white', 100 '#1f4e9c')\nset xrange [0.5:" << static_cast<double>(n) + 0.5
           << "]\nset yrange [" << static_cast<double>(n) + 0.5 << ":0.5]\nset xlabel 'task (position in the order)'\nset ylabel 'after task'\n"
           << "set xtics 1\nset ytics 1\nunset key\n";
    for (std::size_t k = 0; k < m; ++k) {
      script << "set title '" << run.methods[k].key << "' noenhanced\n"
             << "plot 'matrices.dat' index " << k << " using 2:1:3 with image, '' index " << k
             << " using 2:1:(sprintf('%.0f',$3)) with labels font 'sans,9'\n";
    }
    script << "unset multiplot\n";
    alloy::write_file_atomically(plots / "matrices.gp", script.str());
  }
  // Accuracy of each task over time, one panel per method.
  {
    std::ostringstream data, script;
    for (const auto& method : run.methods) {
      for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t t = 0; t < n; ++t) data << t + 1 << ' ' << 100.0 * method.matrix[t][i] << '\n';
        data << "\n\n";
      }
    }
    alloy::write_file_atomically(plots / "task_curves.dat", data.str());
    script << "set terminal svg size " << 360 * columns << "," << 300 * rows << " font 'sans,11'\n"
           << "set output 'task_curves.svg'\nset multiplot layout " << rows << "," << columns << "\n"
           << "set yrange [0:100]\nset xrange [1:" << n << "]\nset xtics 1\nset xlabel 'after task'\n"
           << "set ylabel 'accuracy (%)'\nset key bottom left font 'sans,8'\n";
    for (std::size_t k = 0; k < m; ++k) {
      script << "set title '" << run.methods[k].key << "' noenhanced\nplot ";
      for (std::size_t i = 0; i < n; ++i) {
        script << (i ? ", " : "") << "'task_curves.dat' index " << k * n + i << " with linespoints title 'task " << i + 1 << "'";
      }
      script << "\n";
    }
    script << "unset multiplot\n";
    alloy::write_file_atomically(plots / "task_curves.gp", script.str());
  }
  // ACC against BWT.
  {
    std::ostringstream data, script;
    for (const auto& method : run.methods) {
      if (method.key == "zero_shot") continue;
      data << 100.0 * mean_of(method.bwt) << ' ' << 100.0 * mean_of(method.acc) << ' ' << method.key << '\n';
    }
    alloy::write_file_atomically(plots / "acc_bwt.dat", data.str());
    script << "set terminal svg size 640,480 font 'sans,11'\nset output 'acc_bwt.svg'\n"
           << "set xlabel 'BWT (points; 0 is no forgetting)'\nset ylabel 'ACC (%)'\nunset key\nset offsets 2,2,2,2\n"
           << "plot 'acc_bwt.dat' using 1:2 with points pt 7 ps 1.2, '' using 1:2:3 with labels offset 0,1 noenhanced\n";
    alloy::write_file_atomically(plots / "acc_bwt.gp", script.str());
  }
  // The stability-plasticity curve of PAM's p.
  if (!run.p_sweep.empty()) {
    std::ostringstream data, script;
    for (const auto& s : run.p_sweep) {
      data << s.p << ' ' << 100.0 * mean_of(s.acc) << ' ' << 100.0 * mean_of(s.bwt) << ' ' << 100.0 * mean_of(s.plasticity) << '\n';
    }
    alloy::write_file_atomically(plots / "p_sweep.dat", data.str());
    script << "set terminal svg size 640,480 font 'sans,11'\nset output 'p_sweep.svg'\nset xlabel \"PAM's p\"\n"
           << "set ylabel 'points'\nset key bottom right\n"
           << "plot 'p_sweep.dat' using 1:2 with linespoints title 'ACC', '' using 1:4 with linespoints title "
              "'plasticity (accuracy on a task just learned)', '' using 1:3 with linespoints title 'BWT'\n";
    alloy::write_file_atomically(plots / "p_sweep.gp", script.str());
  }
  if (!have_gnuplot()) return drawn;
  for (const char* name : {"matrices", "task_curves", "acc_bwt", "p_sweep"}) {
    if (!std::filesystem::exists(plots / (std::string(name) + ".gp"))) continue;
    const std::string command = "cd '" + plots.string() + "' && gnuplot " + name + ".gp 2>/dev/null";
    if (std::system(command.c_str()) == 0) drawn.push_back(std::string("plots/") + name + ".svg");
  }
  return drawn;
}

}  // namespace detail

// Writes results.json, report.md and the plots into `dir`; returns the report's path.
inline std::filesystem::path write_report(const run_summary& run, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  alloy::write_file_atomically(dir / "results.json", run.to_json().dump(2) + "\n");
  const std::vector<std::string> plots = detail::draw_plots(run, dir);
  const std::size_t n = run.orders.front().size();

  std::ostringstream md;
  md << "# CLIP continual learning with alloy\n\n";
  md << "Tasks (learned in " << run.orders.size() << " orders, every figure the mean ± standard deviation over them): ";
  for (std::size_t i = 0; i + 1 < run.task_names.size(); ++i) md << (i ? ", " : "") << '`' << run.task_names[i] << '`';
  md << ". Held out (never trained on): `" << run.task_names.back() << "`. Device: " << run.device << "; the run took "
     << static_cast<long>(run.seconds) << " s. The settings are in `results.json` (`config`).\n\n";
  md << "| method | ACC (%) | BWT (points) | FWT (points) | held-out (%) | train s/task | merge + align s/task |\n";
  md << "| --- | --- | --- | --- | --- | --- | --- |\n";
  for (const auto& m : run.methods) {
    char times[96];
    std::snprintf(times, sizeof times, "%.1f | %.3f", m.train_s, m.merge_s);
    md << "| `" << m.key << "` | " << detail::pct_pm(m.acc) << " | " << detail::pct_pm(m.bwt) << " | " << detail::pct_pm(m.fwt)
       << " | " << detail::pct_pm(m.heldout) << " | " << times << " |\n";
  }
  for (const auto& m : run.methods) {
    if (m.reset_fraction > 0) {
      md << "\n`" << m.key << "` reset " << detail::pct(m.reset_fraction) << "% of G's top-p entries per alignment pass.";
    }
  }
  md << "\n";
  md << "\nACC: mean accuracy on all tasks after the last. BWT: mean change of each task's accuracy from just after "
        "learning it to the end (negative is forgetting). FWT: mean accuracy on each task just before learning it, "
        "minus the base model's. `independent` tests each task with its own LoRA (an upper bound, not a continual "
        "learner; its held-out figure is the base model's). The merge + align column is the time in alloy's merger, "
        "PAM aligner and regularizers per task.\n\n";
  md << "Zero-shot accuracy of the base model: ";
  for (std::size_t i = 0; i < run.task_names.size(); ++i) {
    md << (i ? ", " : "") << '`' << run.task_names[i] << "` " << detail::pct(run.zero_shot[i]) << "%";
  }
  md << ".\n\n";
  if (!run.p_sweep.empty()) {
    md << "## PAM's p: stability against plasticity\n\n| p | ACC (%) | BWT (points) | plasticity (%) | entries reset per pass (%) |\n"
       << "| --- | --- | --- | --- | --- |\n";
    for (const auto& s : run.p_sweep) {
      md << "| " << format_p(s.p) << " | " << detail::pct_pm(s.acc) << " | " << detail::pct_pm(s.bwt) << " | "
         << detail::pct_pm(s.plasticity) << " | " << detail::pct(s.reset_fraction) << " |\n";
    }
    md << "\nPlasticity: mean accuracy on a task right after learning it. Entries reset: the share of G's top-p "
          "entries whose sign T had turned, per alignment pass.\n\n";
  }
  md << "## Accuracy matrices (mean over orders; row: after task t, column: the task learned i-th)\n\n";
  for (const auto& m : run.methods) {
    md << "`" << m.key << "`\n\n| after \\ task |";
    for (std::size_t i = 0; i < n; ++i) md << ' ' << i + 1 << " |";
    md << "\n| --- |";
    for (std::size_t i = 0; i < n; ++i) md << " --- |";
    md << "\n";
    for (std::size_t t = 0; t < n; ++t) {
      md << "| " << t + 1 << " |";
      for (std::size_t i = 0; i < n; ++i) md << ' ' << detail::pct(m.matrix[t][i]) << " |";
      md << "\n";
    }
    md << "\n";
  }
  if (plots.empty()) {
    md << "(No plots: gnuplot is not installed; the data and scripts are in `plots/`.)\n";
  } else {
    md << "## Plots\n\n";
    for (const auto& p : plots) md << "![" << p << "](" << p << ")\n\n";
  }
  alloy::write_file_atomically(dir / "report.md", md.str());
  return dir / "report.md";
}

}  // namespace alloy_clip
