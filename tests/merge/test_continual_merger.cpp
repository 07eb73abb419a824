#include <vector>

#include <catch2/catch.hpp>

#include "alloy/continual/continual_merger.hpp"
#include "tensor_builders.hpp"

using namespace alloy;
using alloy::testing::insert_values;
using alloy::testing::values_of;

namespace {
memory_store single(const std::vector<float>& values) {
  memory_store store;
  insert_values(store, "lora.A", values, shape{static_cast<std::int64_t>(values.size())});
  return store;
}
}  // namespace

TEST_CASE("the running mean weighs every task equally", "[merge][continual]") {
  continual_merger merger(single({0, 0, 0}));
  const std::vector<std::vector<float>> tasks{{3, 0, 6}, {0, 3, 0}, {6, 6, 3}};
  for (const auto& values : tasks) {
    memory_store task = merger.begin_task();
    CHECK(values_of(task.view("lora.A")) == values_of(merger.global().view("lora.A")));  // T starts as G
    const tensor_view t = task.mutable_view("lora.A");
    for (std::size_t i = 0; i < values.size(); ++i) t.as<float>()[i] = values[i];
    merger.end_task(cpu_backend{}, task);
  }
  CHECK(merger.tasks() == 3);
  const auto g = values_of(merger.global().view("lora.A"));
  CHECK(g[0] == Approx(3));
  CHECK(g[1] == Approx(3));
  CHECK(g[2] == Approx(3));
}

TEST_CASE("a fixed weight averages G and T", "[merge][continual]") {
  continual_options options;
  options.merge_rule = continual_rule::fixed_weight;
  options.fixed_weight = 0.5;
  continual_merger merger(single({2, 2}), options);
  merger.end_task(cpu_backend{}, single({4, 0}));
  CHECK(values_of(merger.global().view("lora.A")) == std::vector<float>{3, 1});
  merger.end_task(cpu_backend{}, single({1, 1}));
  CHECK(values_of(merger.global().view("lora.A")) == std::vector<float>{2, 1});
}

TEST_CASE("a policy merges task vectors relative to the initial weights", "[merge][continual]") {
  continual_options options;
  options.merge_rule = continual_rule::policy;
  options.policy = magmax_merge{1.0};
  continual_merger merger(single({0, 0, 0}), options);
  merger.end_task(cpu_backend{}, single({1, -2, 0.5f}));  // the first task becomes G
  CHECK(values_of(merger.global().view("lora.A")) == std::vector<float>{1, -2, 0.5f});
  merger.end_task(cpu_backend{}, single({-3, 1, 0.25f}));  // MagMax of the task vectors from G0 = 0
  CHECK(values_of(merger.global().view("lora.A")) == std::vector<float>{-3, -2, 0.5f});
}

TEST_CASE("the continual merger names a tensor the task lacks", "[merge][continual]") {
  continual_merger merger(single({0}));
  memory_store other;
  insert_values(other, "lora.B", {1}, shape{1});
  CHECK_THROWS_WITH(merger.end_task(cpu_backend{}, other), Catch::Contains("'lora.A'"));
  continual_options bad;
  bad.merge_rule = continual_rule::fixed_weight;
  bad.fixed_weight = 2;
  CHECK_THROWS_AS(continual_merger(single({0}), bad), error);
}

TEST_CASE("a resumed merger continues as the uninterrupted one", "[merge][continual]") {
  const std::vector<std::vector<float>> tasks{{1, -2, 0.5f}, {-3, 1, 0.25f}, {2, 2, -1}};
  for (const bool policy : {false, true}) {
    continual_options options;
    if (policy) {
      options.merge_rule = continual_rule::policy;
      options.policy = task_vector_merge::ties();
    }
    continual_merger whole(single({0.5f, 0.5f, 0.5f}), options);
    for (const auto& t : tasks) whole.end_task(cpu_backend{}, single(t));

    continual_merger first(single({0.5f, 0.5f, 0.5f}), options);
    first.end_task(cpu_backend{}, single(tasks[0]));
    first.end_task(cpu_backend{}, single(tasks[1]));
    // What a checkpoint holds: G, the task count, and G0 for a policy.
    continual_merger resumed = continual_merger::resume(first.global(), 2, options, first.initial());
    CHECK(resumed.tasks() == 2);
    resumed.end_task(cpu_backend{}, single(tasks[2]));
    CHECK(values_of(resumed.global().view("lora.A")) == values_of(whole.global().view("lora.A")));
  }
  continual_options ties;
  ties.merge_rule = continual_rule::policy;
  ties.policy = task_vector_merge::ties();
  CHECK_THROWS_WITH(continual_merger::resume(single({1}), 1, ties), Catch::Contains("needs the initial weights G0"));
  CHECK_THROWS_WITH(continual_merger::resume(single({1, 2}), 1, ties, single({0})), Catch::Contains("has shape"));
}

TEST_CASE("a policy sees the per-model parameters of the options, with the rule's weights", "[merge][continual]") {
  continual_options options;
  options.merge_rule = continual_rule::policy;
  options.policy = task_vector_merge::ties();
  options.policy_parameters.density = 0.5;  // keep the top half of each task vector
  continual_merger merger(single({0, 0, 0, 0}), options);
  merger.end_task(cpu_backend{}, single({4, -1, 2, 0.5f}));
  merger.end_task(cpu_backend{}, single({-1, 3, 0.2f, 2}));
  // Trimmed: {4, 0, 2, 0} and {0, 3, 0, 2}; no conflicts left, each entry from one task.
  CHECK(values_of(merger.global().view("lora.A")) == std::vector<float>{4, 3, 2, 2});

  options.policy_parameters.density = 1.0;  // untrimmed: -1 and 3 lose the sign election, 2 and 0.2 are averaged
  continual_merger full(single({0, 0, 0, 0}), options);
  full.end_task(cpu_backend{}, single({4, -1, 2, 0.5f}));
  full.end_task(cpu_backend{}, single({-1, 3, 0.2f, 2}));
  const auto g = values_of(full.global().view("lora.A"));
  CHECK(g[0] == Approx(4));
  CHECK(g[1] == Approx(3));
  CHECK(g[2] == Approx(1.1));
  CHECK(g[3] == Approx(1.25));
}

TEST_CASE("a refused task leaves G and the task count as they were", "[merge][continual]") {
  // The offending tensor in the middle: the first is merged only if the check came tensor by tensor.
  const auto three = [](float first, bool with_middle, std::int64_t last_size) {
    memory_store store;
    insert_values(store, "a", {first, first}, shape{2});
    if (with_middle) insert_values(store, "b", {first, first}, shape{2});
    insert_values(store, "c", std::vector<float>(static_cast<std::size_t>(last_size), first), shape{last_size});
    return store;
  };
  std::vector<continual_options> rules(2);
  rules[1].merge_rule = continual_rule::policy;
  rules[1].policy = merge_policy(task_vector_merge::ties());
  for (const auto& options : rules) {
    continual_merger merger(three(1, true, 2), options);
    merger.end_task(cpu_backend{}, three(3, true, 2));
    const memory_store before = merger.global();
    CHECK_THROWS_WITH(merger.end_task(cpu_backend{}, three(5, false, 2)), Catch::Contains("'b'"));
    CHECK_THROWS_WITH(merger.end_task(cpu_backend{}, three(5, true, 3)), Catch::Contains("'c'"));
    memory_store integers = three(5, true, 2);
    memory_store with_integers;
    with_integers.insert("a", integers.view("a"));
    with_integers.insert("b", dtype::i64, shape{2});
    with_integers.insert("c", integers.view("c"));
    CHECK_THROWS_WITH(merger.end_task(cpu_backend{}, with_integers), Catch::Contains("'b'"));
    CHECK(merger.tasks() == 1);
    for (const auto& name : before.names()) {
      INFO(name);
      CHECK(values_of(merger.global().view(name)) == values_of(before.view(name)));
    }
  }
  continual_options bad;
  bad.merge_rule = continual_rule::policy;
  bad.policy = merge_policy(task_vector_merge::ties());
  bad.policy_parameters.density = 1.5;
  CHECK_THROWS_WITH(continual_merger(three(1, true, 2), bad), Catch::Contains("density"));
}
