// Every algorithm written once over the backend primitives (the merge methods through a plan,
// PAM, the regularizers, the continual merger) runs through a second backend type and gives the
// CPU backend's bits, calling the primitives it is expected to call.

#include <algorithm>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/align/pam.hpp"
#include "alloy/align/regularizers.hpp"
#include "alloy/continual/continual_merger.hpp"
#include "alloy/merge/execute_plan.hpp"
#include "counting_backend.hpp"
#include "tensor_builders.hpp"

using namespace alloy;
using alloy::testing::counting_backend;
using alloy::testing::insert_values;
using alloy::testing::random_values;
using alloy::testing::same_bytes;

namespace {

// Three tensors per store, the middle one across a chunk boundary, in f32 and bf16.
memory_store weights(unsigned seed, dtype type = dtype::f32) {
  memory_store store;
  insert_values(store, "layers.0.w", random_values(640, seed), shape{20, 32}, type);
  insert_values(store, "layers.1.w", random_values(cpu_backend::chunk_elements + 300, seed + 1),
                shape{static_cast<std::int64_t>(cpu_backend::chunk_elements + 300)}, type);
  insert_values(store, "head.w", random_values(70, seed + 2), shape{7, 10}, type);
  return store;
}

void require_same(const memory_store& a, const memory_store& b) {
  REQUIRE(a.names() == b.names());
  for (const auto& name : a.names()) {
    INFO(name);
    CHECK(a.view(name).dtype() == b.view(name).dtype());
    CHECK(same_bytes(a.view(name), b.view(name)));
  }
}

}  // namespace

TEST_CASE("every merge method through a second backend gives the CPU's bits", "[exec][backend]") {
  for (const dtype type : {dtype::f32, dtype::bf16}) {
    const memory_store base = weights(1, type);
    const std::vector<memory_store> models{weights(11, type), weights(21, type), weights(31, type)};
    for (const auto& method : merge_methods()) {
      INFO(method.name << " in " << name(type));
      const std::size_t count = std::min(method.max_models, models.size());
      merge_recipe recipe{.method = std::string(method.name)};
      for (const auto& p : method.parameters) {  // required method parameters (slerp's and nearswap's t)
        if (p.where == parameter_definition::scope::method && p.required()) recipe.parameters.emplace(p.name, 0.3);
      }
      if (method.find("seed") != nullptr) recipe.parameters = {{"seed", 7.0}};
      for (std::size_t i = 0; i < count; ++i) {
        parameter_map p;
        if (method.find("weight") != nullptr) p.emplace("weight", 0.5 + 0.25 * static_cast<double>(i));
        if (method.find("density") != nullptr) p.emplace("density", 0.6);
        recipe.model_parameters.push_back(p);
      }
      const std::span<const memory_store> inputs(models.data(), count);
      const memory_store want = merge_stores(recipe, cpu_backend{}, &base, inputs);
      const counting_backend second;
      const memory_store got = merge_stores(recipe, second, &base, inputs);
      require_same(want, got);
      CHECK(second.calls->elementwise >= 3);  // one per tensor at least
    }
  }
}

TEST_CASE("PAM through a second backend gives the CPU's resets and bits", "[exec][backend][pam]") {
  for (const dtype type : {dtype::f32, dtype::bf16}) {
    for (const auto mode : {pam_reset::to_zero, pam_reset::to_global}) {
      const memory_store global = weights(3, type);
      memory_store on_cpu = weights(4, type);
      memory_store on_second = on_cpu;
      pam_aligner cpu_aligner({0.4, 1, mode});
      cpu_aligner.set_global(cpu_backend{}, global);
      const counting_backend second;
      pam_aligner second_aligner({0.4, 1, mode});
      second_aligner.set_global(second, global);
      CHECK(second.calls->rank_band_mask == 3);  // one top-p mask per tensor
      std::size_t callbacks = 0;
      const pam_report want = cpu_aligner.align(cpu_backend{}, global, on_cpu);
      const pam_report got = second_aligner.align(second, global, on_second,
                                                  [&](std::string_view, const bit_mask&) { ++callbacks; });
      REQUIRE(want.total_reset > 0);
      CHECK(got.reset_per_tensor == want.reset_per_tensor);
      CHECK(got.total_considered == want.total_considered);
      CHECK(callbacks == 3);
      CHECK(second.calls->select_where == 3);
      CHECK(second.calls->elementwise == 3);
      CHECK(second.calls->count_set == 6);  // the top-p masks' and the resets'
      for (const auto& name : global.names()) {
        CHECK(std::equal(cpu_aligner.top_masks().at(name).words(),
                         cpu_aligner.top_masks().at(name).words() + (global.view(name).numel() + 63) / 64,
                         second_aligner.top_masks().at(name).words()));
      }
      require_same(on_cpu, on_second);
    }
  }
}

TEST_CASE("the regularizers through a second backend give the CPU's values and gradients", "[exec][backend]") {
  const memory_store global = weights(5);
  const memory_store task = weights(6);
  const memory_store initial = weights(7);
  memory_store cpu_gradient, second_gradient;
  for (const auto& name : global.names()) {
    insert_values(cpu_gradient, name, random_values(global.view(name).numel(), 8), global.view(name).shape());
  }
  second_gradient = cpu_gradient;
  const tensor_masks masks = top_magnitude_masks(cpu_backend{}, global, 0.3);
  const counting_backend second;
  const double want = l2_pull(cpu_backend{}, global, task, cpu_gradient, 0.7) +
                      l2_pull(cpu_backend{}, global, task, cpu_gradient, 0.7, &masks) +
                      sign_agreement(cpu_backend{}, global, task, cpu_gradient, 1.3, masks) +
                      cosine_alignment(cpu_backend{}, global, task, initial, cpu_gradient, 2.0);
  const double got = l2_pull(second, global, task, second_gradient, 0.7) +
                     l2_pull(second, global, task, second_gradient, 0.7, &masks) +
                     sign_agreement(second, global, task, second_gradient, 1.3, masks) +
                     cosine_alignment(second, global, task, initial, second_gradient, 2.0);
  CHECK(got == want);  // the same sums in the same order: the same bits
  require_same(cpu_gradient, second_gradient);
  CHECK(second.calls->reduce_sums == 12);
  CHECK(second.calls->elementwise == 12);
}

TEST_CASE("the continual merger through a second backend gives the CPU's G for every rule", "[exec][backend][continual]") {
  std::vector<continual_options> rules(3);
  rules[1].merge_rule = continual_rule::fixed_weight;
  rules[1].fixed_weight = 0.3;
  rules[2].merge_rule = continual_rule::policy;
  rules[2].policy = merge_policy(task_vector_merge::ties());
  rules[2].policy_parameters.density = 0.4;
  for (const auto& options : rules) {
    INFO("rule " << static_cast<int>(options.merge_rule));
    continual_merger on_cpu(weights(9, dtype::bf16), options);
    continual_merger on_second(weights(9, dtype::bf16), options);
    const counting_backend second;
    for (unsigned task = 0; task < 3; ++task) {
      const memory_store trained = weights(40 + 10 * task, dtype::bf16);
      on_cpu.end_task(cpu_backend{}, trained);
      on_second.end_task(second, trained);
    }
    CHECK(on_second.tasks() == 3);
    require_same(on_cpu.global(), on_second.global());
    CHECK(second.calls->elementwise >= 9);
  }
}
