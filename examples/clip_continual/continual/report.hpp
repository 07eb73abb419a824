#pragma once
// What a continual-learning run writes: results.json (every figure: mean, standard deviation and
// 95% interval over task orders; the paired differences of methods run on the same orders),
// report.md (the tables, and in words which differences are resolved), and plots drawn by gnuplot
// (SVG) when it is installed.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/store/file_io.hpp"
#include "protocol.hpp"
#include "results.hpp"
#include "statistics.hpp"

namespace alloy_clip {

// The figures of one method over the orders it ran (index k of every vector: order k; every
// method runs the same orders, so index k pairs two methods on the same order).
struct method_summary {
  std::string key;
  double p = 0;
  std::vector<double> acc, bwt, fwt, plasticity, heldout;  // one per order
  std::vector<std::vector<double>> acc_curve;               // per order: ACC over the tasks seen, after each task
  std::vector<std::vector<double>> bwt_curve;               // per order: BWT over the tasks seen, after each task
  std::vector<double> seconds_per_task;                     // mean over orders: training + merge and alignment, by position
  std::vector<double> resident_mb;                          // the largest over orders, after the task at each position
  std::vector<std::vector<double>> matrix;                  // mean over orders, by position
  double train_s = 0, merge_s = 0;                          // mean per task
  double reset_fraction = 0;                                // PAM: mean share of G's top-p entries reset per pass
  std::vector<double> rank_kept;                            // merging B A: mean over orders, after the task at each position

  static method_summary of(const std::vector<cell_result>& cells, const std::vector<double>& zero_shot) {
    method_summary s;
    s.key = cells.front().method;
    s.p = cells.front().p;
    const std::size_t n = cells.front().task_order.size();
    s.matrix.assign(n, std::vector<double>(n, 0.0));
    s.seconds_per_task.assign(n, 0.0);
    s.resident_mb.assign(n, 0.0);
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
      s.acc_curve.push_back(acc_after_each_task(c.matrix));
      s.bwt_curve.push_back(bwt_after_each_task(c.matrix));
      for (const double r : c.reset_fraction) {
        resets += r;
        ++reset_count;
      }
      if (c.rank_kept.size() == n) {
        s.rank_kept.resize(n, 0.0);
        for (std::size_t t = 0; t < n; ++t) s.rank_kept[t] += c.rank_kept[t] / static_cast<double>(cells.size());
      }
      for (std::size_t t = 0; t < n; ++t) {
        for (std::size_t i = 0; i < n; ++i) s.matrix[t][i] += c.matrix[t][i] / static_cast<double>(cells.size());
        train += c.train_s[t];
        merge += c.merge_s[t];
        s.seconds_per_task[t] += (c.train_s[t] + c.merge_s[t]) / static_cast<double>(cells.size());
        if (t < c.resident_mb.size()) s.resident_mb[t] = std::max(s.resident_mb[t], c.resident_mb[t]);
      }
    }
    s.train_s = train / static_cast<double>(n * cells.size());
    s.merge_s = merge / static_cast<double>(n * cells.size());
    s.reset_fraction = reset_count == 0 ? 0.0 : resets / static_cast<double>(reset_count);
    return s;
  }

  // ACC (or BWT) after task t over the orders: the mean of acc_curve[k][t] with its interval.
  [[nodiscard]] interval curve_at(std::size_t t) const { return at_position(acc_curve, t); }
  [[nodiscard]] interval bwt_at(std::size_t t) const { return at_position(bwt_curve, t); }
  static interval at_position(const std::vector<std::vector<double>>& curves, std::size_t t) {
    std::vector<double> values;
    for (const auto& curve : curves) values.push_back(curve[t]);
    return mean_interval(values);
  }

  [[nodiscard]] nlohmann::json to_json() const {
    nlohmann::json curve = nlohmann::json::array(), bwt_after = nlohmann::json::array();
    for (std::size_t t = 0; t < matrix.size(); ++t) {
      curve.push_back(interval_json(curve_at(t)));
      bwt_after.push_back(interval_json(bwt_at(t)));
    }
    return {{"acc", mean_of(acc)},
            {"acc_std", std_of(acc)},
            {"acc_ci95", ci_json(acc)},
            {"bwt", mean_of(bwt)},
            {"bwt_std", std_of(bwt)},
            {"bwt_ci95", ci_json(bwt)},
            {"fwt", mean_of(fwt)},
            {"fwt_std", std_of(fwt)},
            {"fwt_ci95", ci_json(fwt)},
            {"plasticity", mean_of(plasticity)},
            {"plasticity_ci95", ci_json(plasticity)},
            {"heldout", mean_of(heldout)},
            {"heldout_std", std_of(heldout)},
            {"heldout_ci95", ci_json(heldout)},
            {"acc_after_each_task", curve},
            {"bwt_after_each_task", bwt_after},
            {"seconds_per_task", seconds_per_task},
            {"resident_mb_after_each_task", resident_mb},
            {"matrix", matrix},
            {"train_s", train_s},
            {"merge_s", merge_s},
            {"reset_fraction", reset_fraction},
            {"rank_kept_after_each_task", rank_kept},
            {"per_order", {{"acc", acc}, {"bwt", bwt}, {"fwt", fwt}, {"heldout", heldout}, {"acc_after_each_task", acc_curve},
                           {"bwt_after_each_task", bwt_curve}}}};
  }

  static nlohmann::json interval_json(const interval& i) {
    nlohmann::json j = {{"mean", i.mean}, {"low", nullptr}, {"high", nullptr}};
    if (i.defined()) j["low"] = i.low, j["high"] = i.high;
    return j;
  }
  static nlohmann::json ci_json(const std::vector<double>& v) {
    const interval i = mean_interval(v);
    return i.defined() ? nlohmann::json::array({i.low, i.high}) : nlohmann::json(nullptr);
  }
};

// Two methods compared on the same orders: the paired differences of their ACC and BWT.
struct paired_comparison {
  std::string method, baseline;
  interval acc, bwt;

  static paired_comparison of(const method_summary& a, const method_summary& b) {
    return {a.key, b.key, paired_interval(a.acc, b.acc), paired_interval(a.bwt, b.bwt)};
  }
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"method", method},
            {"baseline", baseline},
            {"acc_difference", method_summary::interval_json(acc)},
            {"bwt_difference", method_summary::interval_json(bwt)},
            {"acc_resolved", acc.excludes_zero()},
            {"bwt_resolved", bwt.excludes_zero()}};
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
  int threads = 0;  // torch's intra-op threads: floating-point sums, and so the figures, depend on it
  int processes = 1;  // data-parallel ranks (each with `threads`): the batches' split, and so the sums, depend on it
  double seconds = 0;

  [[nodiscard]] const method_summary* find(std::string_view key) const {
    for (const auto& m : methods) {
      if (m.key == key) return &m;
    }
    return nullptr;
  }

  // The pairs the report compares: each method against the one it differs from by one ingredient
  // (method_spec::compared_with), then PAM against every other continual learner that ran.
  [[nodiscard]] std::vector<paired_comparison> comparisons() const {
    std::vector<paired_comparison> pairs;
    const auto add = [&](const method_summary& a, const method_summary& b) {
      for (const auto& p : pairs) {
        if ((p.method == a.key && p.baseline == b.key) || (p.method == b.key && p.baseline == a.key)) return;
      }
      pairs.push_back(paired_comparison::of(a, b));
    };
    for (const auto& m : methods) {
      if (const auto* base = find(find_method(m.key).compared_with); base != nullptr) add(m, *base);
    }
    if (const auto* pam = find("pam"); pam != nullptr) {
      for (const auto& m : methods) {
        const method_kind kind = find_method(m.key).kind;
        if (m.key != "pam" && (kind == method_kind::merged || kind == method_kind::sequential)) add(*pam, m);
      }
    }
    return pairs;
  }

  [[nodiscard]] nlohmann::json to_json() const {
    nlohmann::json methods_json = nlohmann::json::object();
    for (const auto& m : methods) methods_json[m.key] = m.to_json();
    nlohmann::json sweep = nlohmann::json::array();
    for (const auto& m : p_sweep) {
      nlohmann::json j = m.to_json();
      j["p"] = m.p;
      sweep.push_back(j);
    }
    nlohmann::json paired = nlohmann::json::array();
    for (const auto& c : comparisons()) paired.push_back(c.to_json());
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
    c["threads"] = threads;
    c["processes"] = processes;
    c["task_orders"] = order_names;
    c["zero_shot_per_task"] = zs;
    c["seconds"] = seconds;
    return {{"config", c}, {"methods", methods_json}, {"p_sweep", sweep}, {"paired", paired}};
  }
};

namespace detail {

inline std::string pct(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", 100.0 * x);
  return text;
}

// "33.2 [30.1, 36.3]": the mean and its 95% interval in percent or points; `sign` writes "+" on
// differences. One order has no interval: "33.2 (one order)".
inline std::string pct_ci(const interval& i, bool sign = false) {
  const char* format = sign ? "%+.1f [%+.1f, %+.1f]" : "%.1f [%.1f, %.1f]";
  char text[64];
  if (!i.defined()) {
    std::snprintf(text, sizeof text, sign ? "%+.1f (one order)" : "%.1f (one order)", 100.0 * i.mean);
  } else if (i.std <= 1e-12) {
    std::snprintf(text, sizeof text, sign ? "%+.1f" : "%.1f", 100.0 * i.mean);  // the same on every order
  } else {
    std::snprintf(text, sizeof text, format, 100.0 * i.mean, 100.0 * i.low, 100.0 * i.high);
  }
  return text;
}
inline std::string pct_ci(const std::vector<double>& v) { return pct_ci(mean_interval(v)); }

// Half the interval's width, in percent or points, for gnuplot's error bars (0 without an interval).
inline double half_width_pct(const interval& i) { return i.defined() ? 100.0 * i.half_width() : 0.0; }

inline bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

// Methods drawn in one plot each get their own point type and colour from gnuplot's cycle, and a
// key entry outside the plot: names never overlap, however close the points.
constexpr const char* key_outside = "set key outside right top vertical noenhanced font 'sans,9'\n";

// gnuplot's colours repeat after eight series; filled and open shapes in turn keep 14 apart.
inline int point_type(std::size_t series) {
  constexpr int shapes[] = {7, 5, 9, 11, 13, 15, 4, 6, 8, 10, 12, 14, 1, 2};
  return shapes[series % std::size(shapes)];
}

// The plots' data files and gnuplot scripts; returns the SVG files drawn.
inline std::vector<std::string> draw_plots(const run_summary& run, const std::vector<paired_comparison>& pairs,
                                           const std::filesystem::path& dir) {
  std::vector<std::string> drawn;
  const auto plots = dir / "plots";
  std::filesystem::create_directories(plots);
  const std::size_t n = run.orders.front().size();
  const std::size_t m = run.methods.size();
  const std::size_t columns = std::min<std::size_t>(m, 3), rows = (m + columns - 1) / columns;
  std::vector<std::string> written;

  // Accuracy matrices (mean over orders), one panel per method, each entry a cell of its own
  // (boxes, not an image: SVG viewers smooth images).
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
           << "set xtics 1\nset ytics 1\nunset key\nset style fill solid 1.0 noborder\n";
    for (std::size_t k = 0; k < m; ++k) {
      script << "set title '" << run.methods[k].key << "' noenhanced\n"
             << "plot 'matrices.dat' index " << k << " using 2:1:(0.5):(0.5):3 with boxxyerror lc palette, '' index " << k
             << " using 2:1:(sprintf('%.0f',$3)) with labels font 'sans," << (n > 8 ? 6 : 9) << "'\n";
    }
    script << "unset multiplot\n";
    alloy::write_file_atomically(plots / "matrices.gp", script.str());
    written.push_back("matrices");
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
           << "set ylabel 'accuracy (%)'\n" << (n > 8 ? "unset key\n" : "set key bottom left font 'sans,8'\n");
    for (std::size_t k = 0; k < m; ++k) {
      script << "set title '" << run.methods[k].key << "' noenhanced\nplot ";
      for (std::size_t i = 0; i < n; ++i) {
        script << (i ? ", " : "") << "'task_curves.dat' index " << k * n + i << " with linespoints title 'task " << i + 1 << "'";
      }
      script << "\n";
    }
    script << "unset multiplot\n";
    alloy::write_file_atomically(plots / "task_curves.gp", script.str());
    written.push_back("task_curves");
  }
  // ACC over the tasks seen after each task, every method on one plot, with 95% intervals; the
  // methods are shifted a little along x so that their error bars do not hide each other.
  {
    std::ostringstream data, script;
    for (std::size_t k = 0; k < m; ++k) {
      const double shift = 0.3 * (static_cast<double>(k) / static_cast<double>(std::max<std::size_t>(m - 1, 1)) - 0.5);
      for (std::size_t t = 0; t < n; ++t) {
        const interval at = run.methods[k].curve_at(t);
        data << static_cast<double>(t + 1) + shift << ' ' << 100.0 * at.mean << ' ' << half_width_pct(at) << '\n';
      }
      data << "\n\n";
    }
    alloy::write_file_atomically(plots / "acc_curve.dat", data.str());
    script << "set terminal svg size 860,480 font 'sans,11'\nset output 'acc_curve.svg'\n" << key_outside
           << "set xrange [0.5:" << static_cast<double>(n) + 0.5 << "]\nset xtics 1\nset yrange [0:100]\n"
           << "set xlabel 'after task'\nset ylabel 'ACC over the tasks seen (%), 95% interval'\nplot ";
    for (std::size_t k = 0; k < m; ++k) {
      script << (k ? ", " : "") << "'acc_curve.dat' index " << k << " using 1:2:3 with yerrorlines lw 1.5 pt " << point_type(k) << " title '"
             << run.methods[k].key << "'";
    }
    script << "\n";
    alloy::write_file_atomically(plots / "acc_curve.gp", script.str());
    written.push_back("acc_curve");
  }
  // ACC against BWT, both with their intervals.
  {
    std::ostringstream data, script;
    std::vector<std::string> shown;
    for (const auto& method : run.methods) {
      if (method.key == "zero_shot") continue;
      const interval acc = mean_interval(method.acc), bwt = mean_interval(method.bwt);
      data << 100.0 * bwt.mean << ' ' << 100.0 * acc.mean << ' ' << half_width_pct(bwt) << ' ' << half_width_pct(acc) << "\n\n\n";
      shown.push_back(method.key);
    }
    alloy::write_file_atomically(plots / "acc_bwt.dat", data.str());
    script << "set terminal svg size 860,520 font 'sans,11'\nset output 'acc_bwt.svg'\n" << key_outside
           << "set xlabel 'BWT (points; 0 is no forgetting), 95% interval'\nset ylabel 'ACC (%), 95% interval'\nset offsets 2,2,2,2\nplot ";
    for (std::size_t k = 0; k < shown.size(); ++k) {
      script << (k ? ", " : "") << "'acc_bwt.dat' index " << k << " using 1:2:3:4 with xyerrorbars pt " << point_type(k)
             << " ps 1.1 title '" << shown[k] << "'";
    }
    script << "\n";
    alloy::write_file_atomically(plots / "acc_bwt.gp", script.str());
    written.push_back("acc_bwt");
  }
  // The paired differences of ACC with their intervals (a forest plot): a bar that does not
  // cross the zero line is a resolved difference.
  if (!pairs.empty()) {
    std::ostringstream data, script;
    for (std::size_t k = 0; k < pairs.size(); ++k) {
      data << 100.0 * pairs[k].acc.mean << ' ' << k << ' ' << half_width_pct(pairs[k].acc) << " \"" << pairs[k].method << " - "
           << pairs[k].baseline << "\"\n";
    }
    alloy::write_file_atomically(plots / "paired.dat", data.str());
    script << "set terminal svg size 760," << 120 + 26 * pairs.size() << " font 'sans,11'\nset output 'paired.svg'\n"
           << "set termoption noenhanced\nunset key\nset yrange [" << static_cast<double>(pairs.size()) - 0.5 << ":-0.5]\n"
           << "set xlabel 'paired difference of ACC over the same orders (points), 95% interval'\n"
           << "set arrow from 0, graph 0 to 0, graph 1 nohead dt 2\nset grid xtics\n"
           << "plot 'paired.dat' using 1:2:3:ytic(4) with xerrorbars pt 7 ps 1.1\n";
    alloy::write_file_atomically(plots / "paired.gp", script.str());
    written.push_back("paired");
  }
  // The stability-plasticity curve of PAM's p.
  if (!run.p_sweep.empty()) {
    std::ostringstream data, script;
    for (const auto& s : run.p_sweep) {
      const interval acc = mean_interval(s.acc), bwt = mean_interval(s.bwt), plasticity = mean_interval(s.plasticity);
      data << s.p << ' ' << 100.0 * acc.mean << ' ' << half_width_pct(acc) << ' ' << 100.0 * bwt.mean << ' ' << half_width_pct(bwt)
           << ' ' << 100.0 * plasticity.mean << ' ' << half_width_pct(plasticity) << '\n';
    }
    alloy::write_file_atomically(plots / "p_sweep.dat", data.str());
    script << "set terminal svg size 760,480 font 'sans,11'\nset output 'p_sweep.svg'\nset xlabel \"PAM's p\"\n"
           << "set ylabel 'points, 95% interval'\n" << key_outside
           << "plot 'p_sweep.dat' using 1:2:3 with yerrorlines title 'ACC', '' using 1:6:7 with yerrorlines title "
              "'plasticity', '' using 1:4:5 with yerrorlines title 'BWT'\n";
    alloy::write_file_atomically(plots / "p_sweep.gp", script.str());
    written.push_back("p_sweep");
  }
  if (!have_gnuplot()) return drawn;
  for (const auto& name : written) {
    const std::string command = "cd '" + plots.string() + "' && gnuplot " + name + ".gp 2>/dev/null";
    if (std::system(command.c_str()) == 0) drawn.push_back("plots/" + name + ".svg");
  }
  return drawn;
}

// The paired differences in words: which are resolved at 95%, which are not, for ACC and BWT.
inline std::string resolved_in_words(const std::vector<paired_comparison>& pairs) {
  const auto sentences = [&](interval paired_comparison::*metric, const char* name, const char* up, const char* down) {
    std::ostringstream resolved, unresolved;
    std::size_t resolved_count = 0, unresolved_count = 0;
    for (const auto& p : pairs) {
      const interval& d = p.*metric;
      if (!d.defined()) continue;
      const std::string pair = "`" + p.method + "` - `" + p.baseline + "` " + pct_ci(d, true);
      if (d.excludes_zero()) {
        resolved << (resolved_count++ ? "; " : "") << pair << (d.mean > 0 ? up : down);
      } else {
        unresolved << (unresolved_count++ ? "; " : "") << pair;
      }
    }
    std::ostringstream text;
    if (resolved_count + unresolved_count == 0) return text.str();
    text << "**" << name << ", resolved** (the 95% interval of the paired difference excludes zero): "
         << (resolved_count ? resolved.str() : std::string("none")) << ".\n\n"
         << "**" << name << ", not resolved** (the interval contains zero: these runs cannot tell the two apart): "
         << (unresolved_count ? unresolved.str() : std::string("none")) << ".\n\n";
    return text.str();
  };
  const std::string text = sentences(&paired_comparison::acc, "ACC", " (higher)", " (lower)") +
                           sentences(&paired_comparison::bwt, "BWT", " (less forgetting)", " (more forgetting)");
  return text.empty() ? "With one order there are no intervals: run with `--orders 2` or more to compare methods.\n" : text;
}

}  // namespace detail

// Writes results.json, report.md and the plots into `dir`; returns the report's path.
inline std::filesystem::path write_report(const run_summary& run, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  alloy::write_file_atomically(dir / "results.json", run.to_json().dump(2) + "\n");
  const std::vector<paired_comparison> pairs = run.comparisons();
  const std::vector<std::string> plots = detail::draw_plots(run, pairs, dir);
  const std::size_t n = run.orders.front().size();
  const std::size_t orders = run.orders.size();

  std::ostringstream md;
  md << "# CLIP continual learning with alloy\n\n";
  md << "Tasks (learned in " << orders << " orders): ";
  for (std::size_t i = 0; i + 1 < run.task_names.size(); ++i) md << (i ? ", " : "") << '`' << run.task_names[i] << '`';
  md << ". Held out (never trained on): `" << run.task_names.back() << "`. Device: " << run.device << ", "
     << (run.processes > 1 ? std::to_string(run.processes) + " data-parallel processes of " : std::string()) << run.threads
     << " threads; the run took " << static_cast<long>(run.seconds) << " s. The settings are in `results.json` (`config`).\n\n";
  md << "Every figure is the mean over the orders with its 95% confidence interval in brackets (Student's t with "
     << (orders > 1 ? orders - 1 : 0) << " degrees of freedom"
     << (orders > 1 ? "" : "; one order has no interval") << "; a figure without one was the same on every order). The same seed, device and thread count give the same "
        "figures bit for bit; another thread count or CPU sums in another order, and training amplifies that into "
        "differences of a few points (docs/results.md measures it), which is why methods are compared below on the "
        "same orders.\n\n";
  md << "| method | ACC (%) | BWT (points) | FWT (points) | held-out (%) | train s/task | merge + align s/task |\n";
  md << "| --- | --- | --- | --- | --- | --- | --- |\n";
  for (const auto& m : run.methods) {
    char times[96];
    std::snprintf(times, sizeof times, "%.1f | %.3f", m.train_s, m.merge_s);
    md << "| `" << m.key << "` | " << detail::pct_ci(m.acc) << " | " << detail::pct_ci(m.bwt) << " | " << detail::pct_ci(m.fwt)
       << " | " << detail::pct_ci(m.heldout) << " | " << times << " |\n";
  }
  for (const auto& m : run.methods) {
    if (m.reset_fraction > 0) {
      md << "\n`" << m.key << "` reset " << detail::pct(m.reset_fraction) << "% of G's top-p entries per alignment pass.";
    }
    if (!m.rank_kept.empty()) {
      md << "\n`" << m.key << "`: G's factors, at the LoRA's rank, kept " << detail::pct(m.rank_kept.back())
         << "% of the merged update's squared norm after the last task (the rest was truncated; after each task in results.json).";
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
  if (!pairs.empty()) {
    md << "## Paired differences (the same orders)\n\n"
       << "Each method against the one it differs from by one ingredient, then PAM against every other continual "
          "learner: the mean over orders of the per-order difference, with its 95% interval.\n\n"
       << "| method - baseline | ACC difference (points) | BWT difference (points) |\n| --- | --- | --- |\n";
    for (const auto& p : pairs) {
      md << "| `" << p.method << "` - `" << p.baseline << "` | " << detail::pct_ci(p.acc, true) << (p.acc.excludes_zero() ? " **resolved**" : "")
         << " | " << detail::pct_ci(p.bwt, true) << (p.bwt.excludes_zero() ? " **resolved**" : "") << " |\n";
    }
    md << "\n" << detail::resolved_in_words(pairs);
  }
  if (!run.p_sweep.empty()) {
    const method_summary* plain = run.find("merge_avg");
    md << "## PAM's p: stability against plasticity\n\n| p | ACC (%) | BWT (points) | plasticity (%) | entries reset per pass (%) |"
       << (plain ? " ACC - `merge_avg` (points) |" : "") << "\n| --- | --- | --- | --- | --- |" << (plain ? " --- |" : "") << "\n";
    for (const auto& s : run.p_sweep) {
      md << "| " << format_p(s.p) << " | " << detail::pct_ci(s.acc) << " | " << detail::pct_ci(s.bwt) << " | "
         << detail::pct_ci(s.plasticity) << " | " << detail::pct(s.reset_fraction) << " |";
      if (plain) md << ' ' << detail::pct_ci(paired_interval(s.acc, plain->acc), true) << " |";
      md << "\n";
    }
    md << "\nPlasticity: mean accuracy on a task right after learning it. Entries reset: the share of G's top-p "
          "entries whose sign T had turned, per alignment pass.\n\n";
  }
  // After each task: ACC, BWT, time and memory, a column per position in the order.
  const auto per_task_table = [&](const std::string& title, const std::string& what, auto&& cell_of) {
    md << "## " << title << "\n\n" << what << "\n\n| method |";
    for (std::size_t t = 0; t < n; ++t) md << ' ' << t + 1 << " |";
    md << "\n| --- |";
    for (std::size_t t = 0; t < n; ++t) md << " --- |";
    md << "\n";
    for (const auto& m : run.methods) {
      md << "| `" << m.key << "` |";
      for (std::size_t t = 0; t < n; ++t) md << ' ' << cell_of(m, t) << " |";
      md << "\n";
    }
    md << "\n";
  };
  const auto fixed = [](double value, const char* format) {
    char text[32];
    std::snprintf(text, sizeof text, format, value);
    return std::string(text);
  };
  per_task_table("ACC after each task", "The mean accuracy over the tasks learned so far (%, mean over orders).",
                 [&](const method_summary& m, std::size_t t) { return detail::pct(m.curve_at(t).mean); });
  per_task_table("BWT after each task",
                 "The mean change of each earlier task's accuracy since it was learned (points, mean over orders).",
                 [&](const method_summary& m, std::size_t t) { return detail::pct(m.bwt_at(t).mean); });
  per_task_table("Seconds per task", "Training, merge and alignment of the task at each position (mean over orders).",
                 [&](const method_summary& m, std::size_t t) { return fixed(m.seconds_per_task[t], "%.1f"); });
  per_task_table("Memory after each task",
                 "The process's resident memory after the task at each position (MB, the largest over orders; it "
                 "includes every task's images, loaded once at the start).",
                 [&](const method_summary& m, std::size_t t) { return fixed(m.resident_mb[t], "%.0f"); });
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
