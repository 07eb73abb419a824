#include <cmath>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/align/pam.hpp"
#include "tensor_builders.hpp"

using namespace alloy;
using alloy::testing::insert_values;
using alloy::testing::random_values;
using alloy::testing::values_of;

namespace {
memory_store single(const std::vector<float>& values, dtype type = dtype::f32) {
  memory_store store;
  insert_values(store, "w", values, shape{static_cast<std::int64_t>(values.size())}, type);
  return store;
}
}  // namespace

TEST_CASE("PAM resets sign conflicts inside G's top-p mask (hand-built)", "[align][pam]") {
  //                        top 50% of |G|: indices 0, 2, 4 (|5|, |-4|, |3|)
  const memory_store global = single({5, 1, -4, -0.5f, 3, 0});
  memory_store task = single({-1, -1, -2, 2, 0, 7});
  pam_aligner aligner({0.5, 1, pam_reset::to_zero});
  aligner.set_global(cpu_backend{}, global);
  std::vector<std::string> reset_tensors;
  const auto report = aligner.align(cpu_backend{}, global, task, [&](std::string_view name, const bit_mask& reset) {
    reset_tensors.emplace_back(name);
    CHECK(reset.test(0));
    CHECK_FALSE(reset.test(2));
  });
  // 0: G + / T - inside the mask: reset. 1, 3: conflicts outside the mask: kept. 2: agree.
  // 4: T is zero, no sign to conflict. 5: G is zero, outside the mask anyway.
  CHECK(values_of(task.view("w")) == std::vector<float>{0, -1, -2, 2, 0, 7});
  CHECK(report.total_reset == 1);
  CHECK(report.reset_per_tensor.at("w") == 1);
  CHECK(report.total_considered == 3);
  CHECK(reset_tensors == std::vector<std::string>{"w"});
}

TEST_CASE("PAM can reset to G's value", "[align][pam]") {
  const memory_store global = single({5, -4, 3, 1});
  memory_store task = single({-1, 2, -3, -1});
  pam_aligner aligner({0.75, 1, pam_reset::to_global});
  aligner.set_global(cpu_backend{}, global);
  aligner.align(cpu_backend{}, global, task);
  CHECK(values_of(task.view("w")) == std::vector<float>{5, -4, 3, -1});
}

TEST_CASE("PAM with p = 0 changes nothing, and p = 1 leaves no conflict where G is non-zero", "[align][pam]") {
  const std::size_t n = cpu_backend::chunk_elements + 500;
  auto g_values = random_values(n, 7);
  for (std::size_t i = 0; i < n; i += 11) g_values[i] = 0;
  const auto t_values = random_values(n, 8);
  for (dtype type : {dtype::f32, dtype::bf16}) {
    const memory_store global = single(g_values, type);
    memory_store untouched = single(t_values, type);
    pam_aligner none({0.0});
    none.set_global(cpu_backend{}, global);
    CHECK(none.align(cpu_backend{}, global, untouched).total_reset == 0);
    CHECK(values_of(untouched.view("w")) == values_of(single(t_values, type).view("w")));

    memory_store task = single(t_values, type);
    pam_aligner all({1.0});
    all.set_global(cpu_backend{}, global);
    const auto report = all.align(cpu_backend{}, global, task);
    CHECK(report.total_reset > n / 4);
    const auto g = values_of(global.view("w"));
    const auto t = values_of(task.view("w"));
    std::size_t conflicts = 0;
    for (std::size_t i = 0; i < n; ++i) conflicts += (g[i] > 0 && t[i] < 0) || (g[i] < 0 && t[i] > 0) ? 1u : 0u;
    CHECK(conflicts == 0);
    CHECK(all.align(cpu_backend{}, global, task).total_reset == 0);  // idempotent
  }
}

TEST_CASE("PAM steps align every K-th optimizer step", "[align][pam]") {
  pam_aligner aligner({0.5, 3});
  std::vector<bool> due;
  for (int i = 0; i < 7; ++i) due.push_back(aligner.step());
  CHECK(due == std::vector<bool>{false, false, true, false, false, true, false});
  CHECK_THROWS_AS(pam_aligner({1.5}), error);
  CHECK_THROWS_AS(pam_aligner({0.5, 0}), error);
}

TEST_CASE("an alignment pass checks every tensor before it resets any", "[align][pam]") {
  memory_store global;
  insert_values(global, "a", {5, -4}, shape{2});
  insert_values(global, "b", {3, -2}, shape{2});
  insert_values(global, "c", {1, -1}, shape{2});
  const auto task_with = [](std::int64_t middle_size) {
    memory_store task;
    insert_values(task, "a", {-1, 1}, shape{2});  // both entries conflict with G
    insert_values(task, "b", std::vector<float>(static_cast<std::size_t>(middle_size), -1.0f), shape{middle_size});
    insert_values(task, "c", {-1, 1}, shape{2});
    return task;
  };
  pam_aligner aligner({1.0, 1, pam_reset::to_zero});
  aligner.set_global(cpu_backend{}, global);
  memory_store wrong = task_with(3);
  CHECK_THROWS_WITH(aligner.align(cpu_backend{}, global, wrong), Catch::Contains("'b'"));
  CHECK(values_of(wrong.view("a")) == std::vector<float>{-1, 1});  // untouched
  memory_store lacking;
  insert_values(lacking, "a", {-1, 1}, shape{2});
  insert_values(lacking, "c", {-1, 1}, shape{2});
  CHECK_THROWS_WITH(aligner.align(cpu_backend{}, global, lacking), Catch::Contains("'b'"));
  CHECK(values_of(lacking.view("a")) == std::vector<float>{-1, 1});
  memory_store right = task_with(2);
  CHECK(aligner.align(cpu_backend{}, global, right).total_reset == 5);
  CHECK(values_of(right.view("a")) == std::vector<float>{0, 0});
}
