// mergekit's modules (module_plan.hpp) against hand-computed cases on a small vision-language
// model: which tensors each module takes (by name component, by weight_prefix, the rest), slices
// in one module beside whole-model merges in another, the module level of the parameter lookup,
// gradients over a module's own stack, mergekit's choice of models, and the errors.

#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/merge/execute_plan.hpp"
#include "tensor_builders.hpp"

using namespace alloy;

namespace {

// A vision-language model whose every value says where it comes from (model m adds 1000 m):
// language layers i hold 10 i, vision layers 100 + 10 i, the rest a constant of their own.
memory_store vlm(int m, int text_layers = 4, int vision_layers = 3) {
  memory_store store;
  const auto base = static_cast<float>(1000 * m);
  testing::insert_values(store, "language_model.model.embed_tokens.weight", {base + 500, base + 501}, shape{2});
  for (int i = 0; i < text_layers; ++i) {
    const float v = base + 10.0f * static_cast<float>(i);
    testing::insert_values(store, "language_model.model.layers." + std::to_string(i) + ".mlp.w", {v, v + 1}, shape{2});
  }
  testing::insert_values(store, "language_model.model.norm.weight", {base + 600}, shape{1});
  testing::insert_values(store, "language_model.lm_head.weight", {base + 700, base + 701}, shape{2});
  testing::insert_values(store, "vision_tower.vision_model.embeddings.patch_embedding.weight", {base + 800}, shape{1});
  for (int i = 0; i < vision_layers; ++i) {
    const float v = base + 100.0f + 10.0f * static_cast<float>(i);
    testing::insert_values(store, "vision_tower.vision_model.encoder.layers." + std::to_string(i) + ".fc.w", {v}, shape{1});
  }
  testing::insert_values(store, "vision_tower.vision_model.post_layernorm.weight", {base + 900}, shape{1});
  testing::insert_values(store, "multi_modal_projector.linear.weight", {base + 950, base + 951}, shape{2});
  return store;
}

std::vector<plan_input> describe_all(const std::vector<memory_store>& inputs) {
  std::vector<plan_input> described;
  for (std::size_t i = 0; i < inputs.size(); ++i) described.push_back(describe_input(inputs[i], "model " + std::to_string(i)));
  return described;
}

output_module models_module(std::string name, std::vector<module_model> models, parameter_map parameters = {}) {
  output_module module;
  module.name = std::move(name);
  module.models = std::move(models);
  module.parameters = std::move(parameters);
  return module;
}

float value_of(const memory_store& store, const std::string& name, std::size_t i = 0) {
  return testing::values_of(store.view(name)).at(i);
}

std::string refusal(const module_recipe& recipe, const std::vector<memory_store>& inputs) {
  try {
    (void)plan_modules(recipe, describe_all(inputs));
  } catch (const error& e) {
    return e.what();
  }
  return "(planned)";
}

}  // namespace

TEST_CASE("modules: slices of the language model beside whole-model merges of the vision tower and projector",
          "[merge][modules]") {
  const std::vector<memory_store> inputs{vlm(1), vlm(2)};
  module_recipe recipe;
  recipe.method = "linear";
  recipe.parameters = {{"weight", 1.0}};
  output_module text;
  text.name = "text_decoder";  // no component of any name: it takes the tensors no other module takes
  text.slices = {{{{0, 0, 2, {}}}, std::nullopt, {}}, {{{1, 1, 4, {}}}, std::nullopt, {}}};
  recipe.modules.push_back(text);
  // The module's weight (3) beats the top level's (1); model 0's own (1) beats the module's.
  recipe.modules.push_back(models_module("vision_tower", {{0, {{"weight", 1.0}}}, {1, {}}}, {{"weight", 3.0}}));
  recipe.modules.push_back(models_module("multi_modal_projector", {{1, {}}}));

  const merge_plan plan = plan_modules(recipe, describe_all(inputs));
  REQUIRE(plan.modules.size() == 3u);
  CHECK(plan.modules[0].name == "text_decoder");
  CHECK(plan.modules[0].tensor_count == 3 + 5);  // embeddings, norm, head and five layers
  CHECK(plan.modules[0].rule == "every tensor no other module takes");
  CHECK(plan.modules[1].tensor_count == 2 + 3);
  CHECK(plan.modules[1].first_tensor == 8u);
  CHECK(plan.modules[2].tensor_count == 1u);
  CHECK(plan.tensors.size() == 14u);
  REQUIRE(plan.assembled_stacks.size() == 1u);
  CHECK(plan.assembled_stacks[0] == assembled_stack{"language_model.model.layers.", 5});
  // Gradients run over the module's own stack: vision layer i of 3 sits at t = i / 2.
  for (const auto& tensor : plan.tensors) {
    if (tensor.name == "vision_tower.vision_model.encoder.layers.1.fc.w") CHECK(tensor.depth == 0.5);
  }

  const memory_store merged = merge_modules(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  CHECK(merged.names().size() == 14u);
  // Language layers 0, 1 from model 0's layers 0, 1; layers 2..4 from model 1's layers 1..3.
  CHECK(value_of(merged, "language_model.model.layers.1.mlp.w") == 1010.0f);
  CHECK(value_of(merged, "language_model.model.layers.4.mlp.w") == 2030.0f);
  CHECK_FALSE(merged.find("language_model.model.layers.5.mlp.w"));
  CHECK(value_of(merged, "language_model.model.embed_tokens.weight") == 1500.0f);  // the first slice's
  CHECK(value_of(merged, "language_model.lm_head.weight") == 2700.0f);              // the last slice's
  // Vision: (1 * model 0 + 3 * model 1) / 4.
  CHECK(value_of(merged, "vision_tower.vision_model.encoder.layers.2.fc.w") == Approx((1120.0 + 3 * 2120.0) / 4));
  CHECK(value_of(merged, "vision_tower.vision_model.post_layernorm.weight") == Approx((1900.0 + 3 * 2900.0) / 4));
  CHECK(value_of(merged, "multi_modal_projector.linear.weight", 1) == 2951.0f);
}

TEST_CASE("modules: a module setting whose filter matches nothing falls through to the top level", "[merge][modules]") {
  const std::vector<memory_store> inputs{vlm(1), vlm(2)};
  module_recipe recipe;
  recipe.method = "linear";
  recipe.parameters = {{"weight", 1.0}};
  recipe.modules.push_back(models_module("language_model", {{0, {}}, {1, {}}}));
  recipe.modules.push_back(models_module("vision_tower", {{0, {}}, {1, {}}},
                                         {{"weight", parameter_setting::conditional({{"fc", {3.0}}})}}));
  recipe.modules.push_back(models_module("multi_modal_projector", {{0, {}}, {1, {}}}));
  const memory_store merged = merge_modules(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  // "fc" tensors: both models weigh 3, the mean; the others fall through to weight 1, the mean too,
  // so the filter is seen in the resolved weights, not the values.
  const merge_plan plan = plan_modules(recipe, describe_all(inputs));
  for (const auto& tensor : plan.tensors) {
    if (!tensor.name.starts_with("vision_tower.")) continue;
    const double expected = tensor.name.find(".fc.") != std::string::npos ? 3.0 : 1.0;
    CHECK(tensor.merge.per_model.at(1).weight == expected);
  }
  CHECK(value_of(merged, "vision_tower.vision_model.post_layernorm.weight") == 2400.0f);
  CHECK(plan.modules[0].rule == "names with the component 'language_model'");
}

TEST_CASE("modules: a weight_prefix places a module whose name is in no tensor name", "[merge][modules]") {
  const std::vector<memory_store> inputs{vlm(1), vlm(2)};
  module_recipe recipe;
  recipe.method = "linear";
  recipe.parameters = {{"weight", 1.0}};
  output_module image = models_module("image_encoder", {{1, {}}});
  image.weight_prefix = "vision_tower.";
  recipe.modules.push_back(image);
  recipe.modules.push_back(models_module("text_decoder", {{0, {}}}));
  const memory_store merged = merge_modules(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  CHECK(value_of(merged, "vision_tower.vision_model.post_layernorm.weight") == 2900.0f);
  CHECK(value_of(merged, "multi_modal_projector.linear.weight") == 1950.0f);  // the rest: text_decoder's
  CHECK(value_of(merged, "language_model.model.norm.weight") == 1600.0f);
}

TEST_CASE("modules: Qwen2-VL's names (visual., visual.merger.) go to mergekit's modules by alias, the deeper first",
          "[merge][modules]") {
  memory_store store;
  for (const char* name : {"model.embed_tokens.weight", "model.layers.0.mlp.w", "model.layers.1.mlp.w", "model.norm.weight",
                           "lm_head.weight", "visual.patch_embed.proj.weight", "visual.blocks.0.attn.qkv.weight",
                           "visual.blocks.1.attn.qkv.weight", "visual.merger.ln_q.weight", "visual.merger.mlp.0.weight"}) {
    testing::insert_values(store, name, {1.0f}, shape{1});
  }
  const std::vector<memory_store> inputs{store};
  module_recipe recipe;
  recipe.method = "linear";
  recipe.parameters = {{"weight", 1.0}};
  recipe.modules = {models_module("text_decoder", {{0, {}}}), models_module("vision_tower", {{0, {}}}),
                    models_module("multi_modal_projector", {{0, {}}})};
  const merge_plan plan = plan_modules(recipe, describe_all(inputs));
  REQUIRE(plan.modules.size() == 3u);
  CHECK(plan.modules[0].tensor_count == 5u);
  CHECK(plan.modules[1].tensor_count == 3u);
  CHECK(plan.modules[1].rule == "names with the component 'vision_tower', 'visual', 'vision_model', 'vision_encoder'");
  CHECK(plan.modules[2].tensor_count == 2u);
  CHECK(plan.tensors[plan.modules[2].first_tensor].name == "visual.merger.ln_q.weight");
  // A module may be named by the component itself; the deeper component still wins.
  recipe.modules[1] = models_module("visual", {{0, {}}});
  const merge_plan renamed = plan_modules(recipe, describe_all(inputs));
  CHECK(renamed.modules[1].rule == "names with the component 'visual'");
  CHECK(renamed.modules[1].tensor_count == 3u);
  CHECK(renamed.modules[2].tensor_count == 2u);
}

TEST_CASE("modules: the models a module merges follow mergekit's rule for the base", "[merge][modules]") {
  const method_definition& ties = find_merge_method("ties");
  const method_definition& linear = find_merge_method("linear");
  const std::vector<std::size_t> listed{0, 2};
  CHECK(merged_models(ties, 0, listed) == std::vector<std::size_t>{2});          // the base is the base
  CHECK(merged_models(linear, 0, listed) == std::vector<std::size_t>{0, 2});     // the base is a model
  CHECK(merged_models(linear, 1, listed) == std::vector<std::size_t>{0, 2, 1});  // and joins when not listed
  CHECK(merged_models(ties, std::nullopt, listed) == listed);

  // Task arithmetic on the vision tower, relative to the base (input 0): base + (model - base).
  const std::vector<memory_store> inputs{vlm(1), vlm(2)};
  module_recipe recipe;
  recipe.method = "task_arithmetic";
  recipe.base_input = 0;
  recipe.parameters = {{"weight", 0.5}};
  recipe.modules.push_back(models_module("vision_tower", {{0, {}}, {1, {}}}));
  recipe.modules.push_back(models_module("text_decoder", {{0, {}}}));  // the base alone: no models
  CHECK_THAT(refusal(recipe, inputs), Catch::Contains("modules.text_decoder") && Catch::Contains("no models"));
  recipe.modules.back() = models_module("text_decoder", {{1, {}}});
  const memory_store merged = merge_modules(recipe, cpu_backend{}, std::span<const memory_store>(inputs));
  CHECK(value_of(merged, "vision_tower.vision_model.post_layernorm.weight") == 1900.0f + 0.5f * 1000.0f);
}

TEST_CASE("modules: errors name the module and the tensor", "[merge][modules]") {
  const std::vector<memory_store> inputs{vlm(1), vlm(2)};
  module_recipe recipe;
  recipe.method = "linear";
  recipe.parameters = {{"weight", 1.0}};

  recipe.modules = {models_module("vision_tower", {{0, {}}}), models_module("multi_modal_projector", {{0, {}}})};
  CHECK_THAT(refusal(recipe, inputs), Catch::Contains("language_model.model.embed_tokens.weight") &&
                                          Catch::Contains("belongs to no module") && Catch::Contains("mergekit"));

  recipe.modules = {models_module("text_decoder", {{0, {}}}), models_module("image_encoder", {{0, {}}})};
  CHECK_THAT(refusal(recipe, inputs), Catch::Contains("'text_decoder', 'image_encoder'") && Catch::Contains("weight_prefix"));

  output_module first = models_module("image", {{0, {}}});
  first.weight_prefix = "vision_tower.";
  output_module second = first;
  second.name = "pixels";
  recipe.modules = {first, second, models_module("text_decoder", {{0, {}}})};
  CHECK_THAT(refusal(recipe, inputs), Catch::Contains("belongs to both") && Catch::Contains("'image'") &&
                                          Catch::Contains("'pixels'"));

  output_module nowhere = models_module("audio", {{0, {}}});
  nowhere.weight_prefix = "audio_tower.";
  recipe.modules = {nowhere, models_module("text_decoder", {{0, {}}})};
  CHECK_THAT(refusal(recipe, inputs), Catch::Contains("modules.audio") && Catch::Contains("no tensor of model 0") &&
                                          Catch::Contains("'audio_tower.'"));

  output_module both = models_module("text_decoder", {{0, {}}});
  both.slices = {{{{0, 0, 2, {}}}, std::nullopt, {}}};
  recipe.modules = {both};
  CHECK_THAT(refusal(recipe, inputs), Catch::Contains("modules.text_decoder") && Catch::Contains("either models or slices"));

  // Slices in a module with two stacks: the error says so, under the module's name.
  output_module sliced;
  sliced.name = "everything";
  sliced.slices = {{{{0, 0, 2, {}}}, std::nullopt, {}}};
  recipe.modules = {sliced};
  CHECK_THAT(refusal(recipe, inputs), Catch::Contains("modules.everything") && Catch::Contains("2 layer stacks"));

  recipe.modules.clear();
  CHECK_THAT(refusal(recipe, inputs), Catch::Contains("modules: none given"));
}
