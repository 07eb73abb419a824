// mergekit's slices (slice_plan.hpp) against hand-computed cases: which input layer each output
// layer reads, t per slice, the weights outside the stack, passthrough's scale, parameter lookup
// source -> slice -> top level, and the errors that name the slice and source.

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/merge/execute_plan.hpp"
#include "tensor_builders.hpp"

using namespace alloy;

namespace {

// A four-layer model whose every value says where it comes from: model m, layer i, entry j is
// 1000 m + 10 i + j; embeddings 1000 m + 500, norm 1000 m + 600, head 1000 m + 700.
memory_store tagged_model(int m, int layers = 4, const std::string& skipped = "") {
  memory_store store;
  const auto base = static_cast<float>(1000 * m);
  testing::insert_values(store, "model.embed_tokens.weight", {base + 500, base + 501}, shape{2});
  for (int i = 0; i < layers; ++i) {
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    const float layer = base + 10.0f * static_cast<float>(i);
    testing::insert_values(store, prefix + "mlp.w", {layer, layer + 1}, shape{2});
    if (prefix + "norm.weight" != skipped) testing::insert_values(store, prefix + "norm.weight", {layer + 5}, shape{1});
  }
  testing::insert_values(store, "model.norm.weight", {base + 600}, shape{1});
  testing::insert_values(store, "lm_head.weight", {base + 700, base + 701}, shape{2});
  return store;
}

slice_source source(std::size_t input, std::size_t first, std::size_t end, parameter_map parameters = {}) {
  return {input, first, end, std::move(parameters)};
}

}  // namespace

TEST_CASE("slices: a passthrough frankenmerge takes each output layer from its source layer", "[merge][slices]") {
  const std::vector<memory_store> inputs{tagged_model(1), tagged_model(2)};
  slice_recipe recipe;
  recipe.method = "passthrough";
  recipe.slices = {{{source(0, 0, 2)}, std::nullopt, {}}, {{source(1, 1, 4)}, std::nullopt, {}}};
  std::vector<plan_input> described{describe_input(inputs[0], "A"), describe_input(inputs[1], "B")};
  const merge_plan plan = plan_slices(recipe, described);
  REQUIRE(plan.assembled_stacks.size() == 1u);
  CHECK(plan.assembled_stacks[0] == assembled_stack{"model.layers.", 5});
  CHECK(plan.tensors.size() == 3 + 2 * 5);
  CHECK(plan.tensors.front().name == "model.embed_tokens.weight");

  const memory_store merged = merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  // Output layers 0, 1: A's layers 0, 1; output layers 2, 3, 4: B's layers 1, 2, 3.
  CHECK(testing::values_of(merged.view("model.layers.0.mlp.w")) == std::vector<float>{1000, 1001});
  CHECK(testing::values_of(merged.view("model.layers.1.mlp.w")) == std::vector<float>{1010, 1011});
  CHECK(testing::values_of(merged.view("model.layers.2.mlp.w")) == std::vector<float>{2010, 2011});
  CHECK(testing::values_of(merged.view("model.layers.4.mlp.w")) == std::vector<float>{2030, 2031});
  CHECK(testing::values_of(merged.view("model.layers.4.norm.weight")) == std::vector<float>{2035});
  // Before the stack from the first slice (A), after it from the last (B).
  CHECK(testing::values_of(merged.view("model.embed_tokens.weight")) == std::vector<float>{1500, 1501});
  CHECK(testing::values_of(merged.view("model.norm.weight")) == std::vector<float>{2600});
  CHECK(testing::values_of(merged.view("lm_head.weight")) == std::vector<float>{2700, 2701});
  CHECK_FALSE(merged.find("model.layers.5.mlp.w").has_value());
}

TEST_CASE("slices: t restarts in each slice, is 1 for a one-layer slice and 0 outside the stack", "[merge][slices]") {
  const std::vector<memory_store> inputs{tagged_model(0), tagged_model(1)};
  slice_recipe recipe;
  recipe.method = "linear";
  // weight of model 1 rises over each slice from 0 to 1 (model 0 keeps 1): the merge of layer
  // idx is 1000 w / (1 + w) above model 0's value, w = t.
  recipe.parameters = {{"weight", 1.0}};
  const parameter_map rising{{"weight", parameter_setting::gradient({0.0, 1.0})}};
  recipe.slices = {{{source(0, 0, 3), source(1, 0, 3, rising)}, std::nullopt, {}},
                   {{source(0, 3, 4), source(1, 3, 4, rising)}, std::nullopt, {}}};
  const memory_store merged = merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  const auto first_entry = [&](const std::string& name) { return testing::values_of(merged.view(name)).front(); };
  CHECK(first_entry("model.layers.0.mlp.w") == Approx(0.0f));                                     // t = 0
  CHECK(first_entry("model.layers.1.mlp.w") == Approx(10.0f + 1000.0f * 0.5f / 1.5f));            // t = 0.5
  CHECK(first_entry("model.layers.2.mlp.w") == Approx(20.0f + 500.0f));                           // t = 1
  CHECK(first_entry("model.layers.3.mlp.w") == Approx(30.0f + 500.0f));                           // one layer: t = 1
  CHECK(first_entry("model.embed_tokens.weight") == Approx(500.0f));                              // t = 0
  CHECK(first_entry("lm_head.weight") == Approx(700.0f));                                         // t = 0
}

TEST_CASE("slices: parameters from the source, then the slice, then the top level", "[merge][slices]") {
  const std::vector<memory_store> inputs{tagged_model(0), tagged_model(1)};
  slice_recipe recipe;
  recipe.method = "passthrough";
  recipe.parameters = {{"scale", 3.0}};
  recipe.slices = {{{source(0, 0, 1, {{"scale", 2.0}})}, std::nullopt, {{"scale", 5.0}}},  // the source's
                   {{source(1, 1, 2)}, std::nullopt, {{"scale", 5.0}}},                     // the slice's
                   {{source(1, 2, 3)}, std::nullopt, {}}};                                   // the top level's
  const memory_store merged = merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  CHECK(testing::values_of(merged.view("model.layers.0.mlp.w")) == std::vector<float>{0, 2});
  CHECK(testing::values_of(merged.view("model.layers.1.mlp.w")) == std::vector<float>{5050, 5055});
  CHECK(testing::values_of(merged.view("model.layers.2.mlp.w")) == std::vector<float>{3060, 3063});
  // A filter that matches nothing at the source falls through to the slice.
  recipe.slices[0].sources[0].parameters = {{"scale", parameter_setting::conditional({{"self_attn", {9.0}}})}};
  const memory_store fallen = merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  CHECK(testing::values_of(fallen.view("model.layers.0.mlp.w")) == std::vector<float>{0, 5});
}

TEST_CASE("slices: methods with a base read it from the slice's sources", "[merge][slices]") {
  const std::vector<memory_store> inputs{tagged_model(0), tagged_model(1), tagged_model(2)};
  slice_recipe recipe;
  recipe.method = "task_arithmetic";
  recipe.base_input = 0;
  recipe.parameters = {{"weight", 0.5}};
  recipe.slices = {{{source(0, 0, 2), source(1, 0, 2), source(2, 0, 2)}, std::nullopt, {}}};
  const memory_store merged = merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  // base + 0.5 (1000) + 0.5 (2000) on every entry.
  CHECK(testing::values_of(merged.view("model.layers.1.mlp.w")) == std::vector<float>{1510, 1511});

  // A slice whose base is not one of its sources is refused, naming the slice.
  recipe.slices = {{{source(1, 0, 2), source(2, 0, 2)}, std::nullopt, {}}};
  CHECK_THROWS_WITH(merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs)),
                    Catch::Contains("slices[0]") && Catch::Contains("not among the slice's sources"));
  // ... unless the slice names its own base among them.
  recipe.slices[0].base_input = 1;
  const memory_store own_base = merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  CHECK(testing::values_of(own_base.view("model.layers.0.mlp.w")) == std::vector<float>{1500, 1501});
}

TEST_CASE("slices: bad layer ranges, counts and stacks are refused with the slice and source", "[merge][slices]") {
  const std::vector<memory_store> inputs{tagged_model(0), tagged_model(1)};
  slice_recipe recipe;
  recipe.method = "passthrough";
  const auto refused = [&](const char* text) {
    CHECK_THROWS_WITH(merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs)), Catch::Contains(text));
  };
  recipe.slices = {{{source(0, 2, 6)}, std::nullopt, {}}};
  refused("slices[0].sources[0].layer_range: [2, 6] goes beyond model 0");
  recipe.slices = {{{source(0, 3, 1)}, std::nullopt, {}}};
  refused("ends before it starts");
  recipe.method = "linear";
  recipe.parameters = {{"weight", 1.0}};
  recipe.slices = {{{source(0, 0, 2), source(1, 0, 3)}, std::nullopt, {}}};
  refused("slices[0].sources[1].layer_range: spans 3 layers but the slice's first source spans 2");
  recipe.method = "passthrough";
  recipe.parameters = {};
  recipe.slices = {{{source(0, 0, 2), source(1, 0, 2)}, std::nullopt, {}}};
  refused("slices[0].sources: passthrough needs exactly 1 model, got 2");
  recipe.slices = {};
  refused("slices: the list is empty");

  // Two stacks (a vision and a text tower): slices need one.
  memory_store towers;
  testing::insert_values(towers, "vision_model.layers.0.w", {1}, shape{1});
  testing::insert_values(towers, "text_model.layers.0.w", {1}, shape{1});
  const std::vector<memory_store> two{towers};
  recipe.slices = {{{source(0, 0, 1)}, std::nullopt, {}}};
  CHECK_THROWS_WITH(merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(two)),
                    Catch::Contains("2 layer stacks") && Catch::Contains("vision_model.layers."));

  // A source lacking a tensor of its layer: named, with the output tensor.
  const std::vector<memory_store> pair{tagged_model(0), tagged_model(1, 4, "model.layers.1.norm.weight")};
  recipe.method = "linear";
  recipe.parameters = {{"weight", 1.0}};
  recipe.slices = {{{source(0, 0, 2), source(1, 0, 2)}, std::nullopt, {}}};
  CHECK_THROWS_WITH(merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(pair)),
                    Catch::Contains("model.layers.1.norm.weight") && Catch::Contains("model 1"));
}

TEST_CASE("slices: a model's filters see the tensor it is read from, as mergekit's", "[merge][slices]") {
  const std::vector<memory_store> inputs{tagged_model(0)};
  slice_recipe recipe;
  recipe.method = "passthrough";
  // Output layer 0 is read from input layer 3: the filter names the input's layer.
  const parameter_map scaled{{"scale", parameter_setting::conditional({{"layers.3.", {2.0}}, {std::nullopt, {1.0}}})}};
  recipe.slices = {{{source(0, 3, 4, scaled)}, std::nullopt, {}}};
  const memory_store merged = merge_slices(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  CHECK(testing::values_of(merged.view("model.layers.0.mlp.w")) == std::vector<float>{60, 62});
  CHECK(testing::values_of(merged.view("lm_head.weight")) == std::vector<float>{700, 701});
}
