// The continual-learning protocol of the CLIP example: metrics of an accuracy matrix computed by
// hand, task orders, the method table.

#include <torch/torch.h>  // before Catch: glog, which torch includes, also defines CHECK

#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include "../../examples/clip_continual/continual/protocol.hpp"

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
                                         "opcm", "dop"});
  CHECK(find_method("pam").pam == alloy::pam_reset::to_zero);
  CHECK(find_method("pam_global_reset").pam == alloy::pam_reset::to_global);
  CHECK(find_method("pam_ties").merge == alloy::continual_rule::policy);
  CHECK(find_method("pam_ties").merge_method == "ties");
  CHECK_FALSE(find_method("ties_post").pam);
  CHECK(find_method("sign_regularizer").regularizer == regularizer_kind::sign_agreement);
  CHECK(find_method("opcm").merger == merger_kind::opcm);
  CHECK(find_method("dop").merger == merger_kind::dop);
  CHECK(find_method("merge_avg").merger == merger_kind::continual);
  // Every policy a method names is in alloy's registry.
  for (const auto& method : all_methods()) {
    if (method.merge == alloy::continual_rule::policy) CHECK_NOTHROW(alloy::find_merge_method(method.merge_method));
  }
  CHECK_THROWS_WITH(find_method("ewc"), Catch::Contains("unknown method") && Catch::Contains("pam_ties"));
}
