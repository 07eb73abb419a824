// The continual-learning protocol of the CLIP example: metrics of an accuracy matrix computed by
// hand, task orders, the method table, and the statistics of the report (Student's t against
// published quantiles, intervals and paired differences computed by hand).

#include <torch/torch.h>  // before Catch: glog, which torch includes, also defines CHECK

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include <catch2/catch.hpp>

#include "../../examples/clip_continual/continual/protocol.hpp"
#include "../../examples/clip_continual/continual/config.hpp"
#include "../../examples/clip_continual/continual/report.hpp"
#include "test_folder.hpp"

using namespace alloy_clip;

TEST_CASE("ACC, BWT, FWT and plasticity of a hand-made accuracy matrix", "[clip][continual]") {
  // Three tasks; row t: after learning task t.
  const std::vector<std::vector<double>> r = {{0.8, 0.3, 0.2},  //
                                              {0.6, 0.9, 0.25},
                                              {0.5, 0.7, 0.95}};
  const std::vector<double> base = {0.1, 0.2, 0.3};
  const sequence_metrics m = metrics_of(r, base);
  CHECK(m.acc == Approx((0.5 + 0.7 + 0.95) / 3));
  CHECK(m.bwt == Approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2));
  CHECK(m.fwt == Approx(((0.3 - 0.2) + (0.25 - 0.3)) / 2));
  CHECK(m.plasticity == Approx((0.8 + 0.9 + 0.95) / 3));
  // After each task: ACC over the tasks seen, BWT over the tasks before; the last are ACC and BWT.
  const auto acc = acc_after_each_task(r), bwt = bwt_after_each_task(r);
  REQUIRE(acc.size() == 3);
  CHECK(acc[0] == Approx(0.8));
  CHECK(acc[1] == Approx(0.75));
  CHECK(acc[2] == Approx(m.acc));
  CHECK(bwt[0] == 0);
  CHECK(bwt[1] == Approx(-0.2));
  CHECK(bwt[2] == Approx(m.bwt));
  CHECK_THROWS_WITH(metrics_of({{0.1}, {0.2}}, {0.1}), Catch::Contains("disagree"));
  CHECK_THROWS_WITH(metrics_of({{0.1, 0.2}}, {0.1}), Catch::Contains("not square"));
  CHECK(mean_of({1, 2, 3, 6}) == Approx(3));
  CHECK(std_of({1, 2, 3, 6}) == Approx(2.1602468995));  // sample standard deviation (n - 1)
  CHECK(std_of({4}) == 0);
}

TEST_CASE("task orders start with the given one and are distinct permutations", "[clip][continual]") {
  const auto orders = task_orders(5, 4, 0);
  REQUIRE(orders.size() == 4);
  CHECK(orders[0] == std::vector<std::size_t>{0, 1, 2, 3, 4});
  std::set<std::vector<std::size_t>> distinct(orders.begin(), orders.end());
  CHECK(distinct.size() == 4);
  for (const auto& order : orders) CHECK(std::set<std::size_t>(order.begin(), order.end()).size() == 5);
  CHECK(task_orders(5, 4, 0) == orders);
  CHECK(task_orders(5, 4, 1) != orders);
  CHECK(task_orders(3, 6, 2).size() == 6);  // every order of three tasks
  CHECK_THROWS_WITH(task_orders(3, 7, 0), Catch::Contains("have only 6"));
}

TEST_CASE("the methods are the issue's keys, each with its ingredients", "[clip][continual]") {
  std::vector<std::string> keys;
  for (const auto& m : all_methods()) keys.push_back(m.key);
  CHECK(keys == std::vector<std::string>{"zero_shot", "sequential_finetune", "independent", "merge_avg", "pam", "pam_global_reset",
                                         "ties_post", "magmax", "l2_regularizer", "sign_regularizer", "pam_ties",
                                         "opcm", "dop", "magmax_sequence", "merge_avg_ba", "pam_ba", "ties_ba", "opcm_ba"});
  CHECK(find_method("pam").pam == alloy::pam_reset::to_zero);
  CHECK(find_method("pam_global_reset").pam == alloy::pam_reset::to_global);
  CHECK(find_method("pam_ties").merge == alloy::continual_rule::policy);
  CHECK(find_method("pam_ties").merge_method == "ties");
  CHECK_FALSE(find_method("ties_post").pam);
  CHECK(find_method("sign_regularizer").regularizer == regularizer_kind::sign_agreement);
  CHECK(find_method("opcm").merger == merger_kind::opcm);
  CHECK(find_method("dop").merger == merger_kind::dop);
  CHECK(find_method("magmax_sequence").merger == merger_kind::magmax_sequence);
  CHECK(find_method("magmax_sequence").compared_with == "magmax");
  CHECK(find_method("merge_avg").merger == merger_kind::continual);
  // Each method merging the products B A differs from the one it is compared with by that alone.
  for (const auto& method : all_methods()) {
    CAPTURE(method.key);
    CHECK(method.merge_products == method.key.ends_with("_ba"));
    if (!method.merge_products) continue;
    const method_spec& factors = find_method(std::string(method.compared_with));
    CHECK_FALSE(factors.merge_products);
    CHECK(factors.kind == method.kind);
    CHECK(factors.merge == method.merge);
    CHECK(factors.merge_method == method.merge_method);
    CHECK(factors.pam == method.pam);
    CHECK(factors.regularizer == method.regularizer);
    CHECK(factors.merger == method.merger);
  }
  // Every policy a method names is in alloy's registry.
  for (const auto& method : all_methods()) {
    if (method.merge == alloy::continual_rule::policy) CHECK_NOTHROW(alloy::find_merge_method(method.merge_method));
  }
  CHECK_THROWS_WITH(find_method("ewc"), Catch::Contains("unknown method") && Catch::Contains("pam_ties"));
}

TEST_CASE("Student's t: the two-sided quantiles of the tables, and its CDF", "[clip][continual]") {
  // Quantiles t_{0.975} from the standard tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
  CHECK(student_t_two_sided(0.95, 1) == Approx(12.706205).epsilon(1e-6));
  CHECK(student_t_two_sided(0.95, 2) == Approx(4.302653).epsilon(1e-6));
  CHECK(student_t_two_sided(0.95, 4) == Approx(2.776445).epsilon(1e-6));
  CHECK(student_t_two_sided(0.95, 9) == Approx(2.262157).epsilon(1e-6));
  CHECK(student_t_two_sided(0.95, 30) == Approx(2.042272).epsilon(1e-6));
  CHECK(student_t_two_sided(0.99, 9) == Approx(3.249836).epsilon(1e-6));
  CHECK(student_t_two_sided(0.95, 1000000) == Approx(1.959966).epsilon(1e-5));  // the normal's 1.96 in the limit
  CHECK(student_t_cdf(0, 3) == Approx(0.5));
  CHECK(student_t_cdf(-2.262157, 9) == Approx(0.025).epsilon(1e-5));
  CHECK(student_t_cdf(1, 1) == Approx(0.75));  // Cauchy: 1/2 + atan(1)/pi
  CHECK_THROWS_WITH(student_t_two_sided(1.0, 3), Catch::Contains("not in (0, 1)"));
  CHECK_THROWS_WITH(student_t_two_sided(0.95, 0), Catch::Contains("degree of freedom"));
}

TEST_CASE("intervals over orders and paired differences, by hand", "[clip][continual]") {
  // Three orders: mean 0.3, sample std 0.1, half width 4.302653 * 0.1 / sqrt(3).
  const interval i = mean_interval({0.2, 0.3, 0.4});
  CHECK(i.mean == Approx(0.3));
  CHECK(i.std == Approx(0.1));
  CHECK(i.half_width() == Approx(4.302653 * 0.1 / std::sqrt(3.0)).epsilon(1e-6));
  CHECK(i.low == Approx(0.3 - 0.248414).epsilon(1e-5));
  CHECK(i.excludes_zero());  // [0.052, 0.548]
  CHECK_FALSE(mean_interval({-0.1, 0.1, 0.3}).excludes_zero());
  const interval one = mean_interval({0.5});
  CHECK_FALSE(one.defined());
  CHECK(std::isnan(one.low));
  CHECK_FALSE(one.excludes_zero());
  // Two methods that move together with the order: their ACC intervals overlap widely, the
  // paired difference (+0.020, +0.025, +0.015 by order) is resolved.
  const std::vector<double> a = {0.52, 0.325, 0.415}, b = {0.50, 0.30, 0.40};
  CHECK_FALSE(mean_interval(a).low > mean_interval(b).high);
  const interval d = paired_interval(a, b);
  CHECK(d.mean == Approx(0.02));
  CHECK(d.std == Approx(0.005));
  CHECK(d.low == Approx(0.02 - 4.302653 * 0.005 / std::sqrt(3.0)).epsilon(1e-6));
  CHECK(d.excludes_zero());
  CHECK_FALSE(paired_interval(b, a).low > 0);
  CHECK(paired_interval(b, a).excludes_zero());  // lower, and resolved as such
  CHECK_THROWS_WITH(paired_interval({0.1, 0.2}, {0.1}), Catch::Contains("the same orders"));
}

namespace {

// A method's summary from its per-order ACC: one task per order, so ACC is the single accuracy.
method_summary summary_of(const std::string& key, const std::vector<double>& acc) {
  std::vector<cell_result> cells;
  for (std::size_t k = 0; k < acc.size(); ++k) {
    cell_result c;
    c.method = key;
    c.order = k;
    c.task_order = {0};
    c.matrix = {{acc[k]}};
    c.heldout = {0.1};
    c.train_s = {1};
    c.merge_s = {0};
    c.tasks_total = 1;
    cells.push_back(c);
  }
  return method_summary::of(cells, {0.1, 0.1});
}

}  // namespace

TEST_CASE("the report pairs each method with its one-ingredient baseline and says which differences are resolved",
          "[clip][continual]") {
  run_summary run;
  run.task_names = {"a", "held-out"};
  run.zero_shot = {0.1, 0.1};
  run.orders = {{0}, {0}, {0}};
  run.device = "cpu";
  run.methods = {summary_of("sequential_finetune", {0.20, 0.10, 0.15}), summary_of("merge_avg", {0.50, 0.30, 0.40}),
                 summary_of("pam", {0.52, 0.325, 0.415}), summary_of("opcm", {0.40, 0.50, 0.30})};
  const auto pairs = run.comparisons();
  std::vector<std::string> names;
  for (const auto& p : pairs) names.push_back(p.method + " - " + p.baseline);
  CHECK(names == std::vector<std::string>{"merge_avg - sequential_finetune", "pam - merge_avg", "opcm - merge_avg",
                                          "pam - sequential_finetune", "pam - opcm"});
  CHECK(pairs[1].acc.excludes_zero());        // pam - merge_avg: +0.015 to +0.025 on every order
  CHECK_FALSE(pairs[2].acc.excludes_zero());  // opcm - merge_avg: -0.1, +0.2, -0.1
  CHECK(pairs[1].acc.mean == Approx(0.02));

  const alloy::testing::test_folder folder;
  write_report(run, folder.path());
  std::ifstream in(folder / "report.md");
  std::stringstream text;
  text << in.rdbuf();
  const std::string report = text.str();
  const auto resolved = report.find("**ACC, resolved**"), unresolved = report.find("**ACC, not resolved**");
  REQUIRE(resolved != std::string::npos);
  REQUIRE(unresolved != std::string::npos);
  const auto pam_line = report.find("`pam` - `merge_avg` +2.0 [", resolved);
  CHECK(pam_line < unresolved);  // named among the resolved, as higher
  CHECK(report.find("(higher)", resolved) < unresolved);
  CHECK(report.find("`opcm` - `merge_avg` +0.0 [", unresolved) != std::string::npos);
  CHECK(report.find("Student's t with 2 degrees of freedom") != std::string::npos);
  CHECK(report.find("**BWT, resolved**") != std::string::npos);  // every BWT is 0 here: none resolved
  CHECK(report.find("**BWT, resolved** (the 95% interval of the paired difference excludes zero): none.") != std::string::npos);
  CHECK(report.find("## Memory after each task") != std::string::npos);
  CHECK(std::filesystem::exists(folder / "results.json"));
  CHECK(std::filesystem::exists(folder / "plots" / "paired.gp"));
}

TEST_CASE("the settings: today's novel tasks by default, a broad one, and a long sequence of 21", "[clip][continual]") {
  const continual_config config;
  CHECK(config.setting == "novel");
  CHECK(config.tasks == find_setting("novel").tasks);
  CHECK(config.heldout == "digits-inverted");
  CHECK(find_setting("broad").tasks.size() == 5);
  const auto& long_tasks = find_setting("long").tasks;
  CHECK(long_tasks.size() == 21);
  CHECK(std::set<std::string>(long_tasks.begin(), long_tasks.end()).size() == 21);
  for (const auto& s : task_settings()) {
    continual_config c;
    c.tasks = s.tasks;
    c.heldout = s.heldout;
    CHECK_NOTHROW(c.check_tasks());
    for (const auto& task : s.tasks) CHECK_NOTHROW(check_variant(task.substr(task.rfind('-') + 1)));
  }
  CHECK_THROWS_WITH(find_setting("wide"), Catch::Contains("unknown setting") && Catch::Contains("broad"));
  continual_config c;
  c.tasks = {"mnist-flipped", "digits-bold", "mnist-flipped"};
  CHECK_THROWS_WITH(c.check_tasks(), Catch::Contains("'mnist-flipped' is in the sequence twice"));
  c.tasks = {"mnist-flipped", "digits-inverted"};
  CHECK_THROWS_WITH(c.check_tasks(), Catch::Contains("held-out task 'digits-inverted' is also a task"));
  c.tasks = {};
  CHECK_THROWS_WITH(c.check_tasks(), Catch::Contains("no tasks"));
}
