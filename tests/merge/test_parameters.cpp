#include <algorithm>
#include <fstream>
#include <string>
#include <variant>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/merge/execute_plan.hpp"
#include "tensor_builders.hpp"

using namespace alloy;

TEST_CASE("parameter settings: scalars, gradients and filters as mergekit evaluates them", "[merge][parameters]") {
  CHECK(parameter_setting(0.5).evaluate("any", 0.3) == 0.5);
  const auto gradient = parameter_setting::gradient({0.0, 1.0, 0.5});
  CHECK(gradient.evaluate("x", 0.0) == 0.0);
  CHECK(gradient.evaluate("x", 0.25) == Approx(0.5));
  CHECK(gradient.evaluate("x", 0.5) == Approx(1.0));
  CHECK(gradient.evaluate("x", 0.75) == Approx(0.75));
  CHECK(gradient.evaluate("x", 1.0) == Approx(0.5));
  const auto conditional = parameter_setting::conditional(
      {{"self_attn", {0.8}}, {"mlp", {0.2, 0.6}}, {std::nullopt, {0.5}}});
  CHECK(conditional.evaluate("model.layers.3.self_attn.q_proj.weight", 0.1) == 0.8);
  CHECK(conditional.evaluate("model.layers.3.mlp.up_proj.weight", 0.5) == Approx(0.4));
  CHECK(conditional.evaluate("lm_head.weight", 0.5) == 0.5);
  const auto only_attention = parameter_setting::conditional({{"self_attn", {0.8}}});
  CHECK_FALSE(only_attention.evaluate("lm_head.weight", 0).has_value());
  const auto star = parameter_setting::conditional({{"*", {0.3}}});
  CHECK(star.evaluate("anything", 0) == 0.3);
}

TEST_CASE("layer depth: layers evenly per stack, t = 0 outside the stacks, as mergekit", "[merge][parameters]") {
  CHECK(layer_index("model.layers.12.mlp.up_proj.weight") == 12u);
  CHECK(layer_index("vision_model.encoder.layers.0.self_attn.k_proj.bias") == 0u);
  CHECK_FALSE(layer_index("lm_head.weight").has_value());
  CHECK_FALSE(layer_index("model.norm.7").has_value());  // a name that ends in digits is no layer
  CHECK(layer_position_of("model.layers.3.mlp.w")->stack == "model.layers.");

  const std::vector<std::string> names{"model.embed_tokens.weight", "model.layers.0.x", "model.layers.2.x",
                                       "model.layers.4.x", "model.norm.weight", "lm_head.weight"};
  const layer_stacks stacks(names);
  REQUIRE(stacks.stacks().size() == 1);
  CHECK(stacks.layer_count("model.layers.") == 5u);
  CHECK(stacks.depth("model.layers.0.x") == 0.0);
  CHECK(stacks.depth("model.layers.2.x") == 0.5);
  CHECK(stacks.depth("model.layers.4.x") == 1.0);
  // mergekit plans the weights before and after the stack with t = 0 (plan.py, plan_module).
  CHECK(stacks.depth("model.embed_tokens.weight") == 0.0);
  CHECK(stacks.depth("model.norm.weight") == 0.0);
  CHECK(stacks.depth("lm_head.weight") == 0.0);

  // Each stack of a multimodal model on its own: 12 vision layers and 4 text layers.
  std::vector<std::string> clip;
  for (int i = 0; i < 12; ++i) clip.push_back("vision_model.encoder.layers." + std::to_string(i) + ".mlp.fc1.weight");
  for (int i = 0; i < 4; ++i) clip.push_back("text_model.encoder.layers." + std::to_string(i) + ".mlp.fc1.weight");
  const layer_stacks two(clip);
  CHECK(two.stacks().size() == 2);
  CHECK(two.depth("vision_model.encoder.layers.11.mlp.fc1.weight") == 1.0);
  CHECK(two.depth("text_model.encoder.layers.3.mlp.fc1.weight") == 1.0);
  CHECK(two.depth("text_model.encoder.layers.1.mlp.fc1.weight") == Approx(1.0 / 3.0));
  // A stack of one layer: t = 1, as mergekit's slice of one layer.
  CHECK(layer_stacks(std::vector<std::string>{"h.0.w"}).depth("h.0.w") == 1.0);
}

TEST_CASE("recipes resolve model, then top-level, then default values", "[merge][recipe]") {
  memory_store store;
  testing::insert_values(store, "base", {0, 0}, shape{2});
  testing::insert_values(store, "m0", {1, 1}, shape{2});
  testing::insert_values(store, "m1", {3, 3}, shape{2});
  const const_tensor_view models[] = {store.view("m0"), store.view("m1")};
  merge_recipe recipe;
  recipe.method = "task_arithmetic";
  recipe.parameters = {{"weight", parameter_setting(0.5)}, {"lambda", parameter_setting(2.0)}};
  recipe.model_parameters = {{{"weight", parameter_setting(1.0)}}, {}};
  recipe.validate();
  const tensor_view out = store.insert("out", dtype::f32, shape{2});
  merge_tensor(recipe, cpu_backend{}, "w", 0.0, store.view("base"), models, out);
  // weights 1 (model's own) and 0.5 (top level): 2 * (1 * 1 + 0.5 * 3) = 5
  CHECK(testing::values_of(out) == std::vector<float>{5, 5});
}

TEST_CASE("recipes refuse unknown methods and parameters, and missing required ones", "[merge][recipe]") {
  merge_recipe recipe;
  recipe.method = "frankenmerge";
  CHECK_THROWS_WITH(recipe.validate(), Catch::Contains("unknown merge method 'frankenmerge'") && Catch::Contains("ties"));
  recipe.method = "ties";
  recipe.parameters = {{"densty", parameter_setting(0.5)}};
  CHECK_THROWS_WITH(recipe.validate(), Catch::Contains("unknown parameter 'densty'"));
  recipe.parameters = {{"density", parameter_setting(std::nan(""))}};
  CHECK_THROWS_WITH(recipe.validate(), Catch::Contains("not a finite number"));
  recipe.parameters = {};
  recipe.model_parameters = {{{"lambda", parameter_setting(1.0)}}};
  CHECK_THROWS_WITH(recipe.validate(), Catch::Contains("top level"));
  recipe.model_parameters = {{}};
  recipe.parameters = {{"consensus", "majority"}};
  CHECK_THROWS_WITH(recipe.validate(), Catch::Contains("'majority'") && Catch::Contains("one of sum, count"));
  recipe.parameters = {{"consensus", 0.5}};
  CHECK_THROWS_WITH(recipe.validate(), Catch::Contains("consensus") && Catch::Contains("one of sum, count"));
  recipe.parameters = {{"consensus", "count"}};
  recipe.validate();

  memory_store store;
  testing::insert_values(store, "base", {0, 0}, shape{2});
  const const_tensor_view models[] = {testing::insert_values(store, "m", {1, 1}, shape{2})};
  const tensor_view out = store.insert("out", dtype::f32, shape{2});
  CHECK_THROWS_WITH(merge_tensor(recipe, cpu_backend{}, "layer.w", 0.0, store.view("base"), models, out),
                    Catch::Contains("required parameter 'weight'") && Catch::Contains("model 0") &&
                        Catch::Contains("layer.w"));
  // Kinds: a boolean is 0 or 1, a seed a whole number.
  recipe.model_parameters = {{{"weight", 1.0}}};
  recipe.parameters = {{"normalize", 2.0}};
  CHECK_THROWS_WITH(merge_tensor(recipe, cpu_backend{}, "layer.w", 0.0, store.view("base"), models, out),
                    Catch::Contains("'normalize'") && Catch::Contains("a boolean"));
  recipe.method = "dare_ties";
  recipe.parameters = {{"seed", 1.5}};
  CHECK_THROWS_WITH(merge_tensor(recipe, cpu_backend{}, "layer.w", 0.0, store.view("base"), models, out),
                    Catch::Contains("'seed'") && Catch::Contains("whole number"));
  recipe.parameters = {{"seed", -1.0}};
  CHECK_THROWS_WITH(merge_tensor(recipe, cpu_backend{}, "layer.w", 0.0, store.view("base"), models, out),
                    Catch::Contains("'seed'"));
  recipe.parameters = {{"seed", 12.0}, {"consensus", "count"}};
  merge_tensor(recipe, cpu_backend{}, "layer.w", 0.0, store.view("base"), models, out);
}

TEST_CASE("the registry is typed and open, and says how many models each method takes", "[merge][recipe]") {
  const method_definition& ties = find_merge_method("ties");
  CHECK(ties.find("normalize")->type == parameter_definition::kind::boolean);
  CHECK(ties.find("consensus")->type == parameter_definition::kind::choice);
  CHECK(ties.find("consensus")->choices == std::vector<std::string_view>{"sum", "count"});
  CHECK(find_merge_method("dare_ties").find("seed")->type == parameter_definition::kind::integer);
  CHECK(find_merge_method("slerp").max_models == 1);
  CHECK(find_merge_method("model_stock").min_models == 2);
  CHECK_FALSE(find_merge_method("linear").needs_base);

  // Every policy type of the variant is built by some method (nothing in the variant that no
  // config can reach), and every method builds one from its defaults.
  std::vector<bool> built(std::variant_size_v<merge_policy>, false);
  for (const auto& method : merge_methods()) {
    built[method.make(method.defaults([](std::string_view) { return 0.5; })).index()] = true;
  }
  CHECK(std::all_of(built.begin(), built.end(), [](bool b) { return b; }));

  // A registered method: TIES electing by count by default, under its own name.
  method_definition counted = find_merge_method("ties");
  counted.name = "ties_by_count";
  for (auto& p : counted.parameters) {
    if (p.name == "consensus") p.choices = {"count", "sum"};
  }
  register_merge_method(counted);
  CHECK_THROWS_WITH(register_merge_method(counted), Catch::Contains("exists already"));
  const merge_recipe recipe{.method = "ties_by_count", .model_parameters = {{{"weight", 1.0}}}};
  const resolved_merge resolved = resolve_merge(recipe, "w", 0.0, 1);
  CHECK(std::get<task_vector_merge>(resolved.policy).consensus == sign_consensus::count);
  method_definition unnamed;
  CHECK_THROWS_WITH(register_merge_method(unnamed), Catch::Contains("no name"));
}

TEST_CASE("merge_stores merges every tensor and names a missing one", "[merge][recipe]") {
  memory_store base, a, b;
  testing::insert_values(base, "model.layers.0.w", {0, 0}, shape{2});
  testing::insert_values(base, "model.layers.1.w", {0, 0}, shape{2});
  testing::insert_values(a, "model.layers.0.w", {1, 2}, shape{2});
  testing::insert_values(a, "model.layers.1.w", {1, 2}, shape{2});
  testing::insert_values(b, "model.layers.0.w", {3, 4}, shape{2});
  testing::insert_values(b, "model.layers.1.w", {3, 4}, shape{2});
  merge_recipe recipe;
  recipe.method = "task_arithmetic";
  // A gradient over depth: layer 0 gets weight 0, layer 1 weight 1.
  recipe.parameters = {{"weight", parameter_setting::gradient({0.0, 1.0})}};
  recipe.model_parameters = {{}, {}};
  const std::vector<memory_store> models{a, b};
  const auto merged = merge_stores(recipe, cpu_backend{}, &base, std::span<const memory_store>(models));
  CHECK(testing::values_of(merged.view("model.layers.0.w")) == std::vector<float>{0, 0});
  CHECK(testing::values_of(merged.view("model.layers.1.w")) == std::vector<float>{4, 6});

  memory_store partial;
  testing::insert_values(partial, "model.layers.0.w", {1, 2}, shape{2});
  const std::vector<memory_store> broken{a, partial};
  CHECK_THROWS_WITH(merge_stores(recipe, cpu_backend{}, &base, std::span<const memory_store>(broken)),
                    Catch::Contains("'model.layers.1.w'") && Catch::Contains("model 1"));
}

TEST_CASE("docs/policies.md's method table lists every built-in method and no other", "[merge][recipe][docs]") {
  std::ifstream file(std::string(ALLOY_DOCS_DIR) + "/policies.md");
  REQUIRE(file.good());
  std::vector<std::string> documented;
  bool in_table = false;
  for (std::string line; std::getline(file, line);) {
    if (line.rfind("## ", 0) == 0) in_table = line == "## The methods";
    if (!in_table || line.rfind("| `", 0) != 0) continue;
    const std::size_t end = line.find('`', 3);
    documented.push_back(line.substr(3, end - 3));
  }
  std::vector<std::string> registered;
  // The built-in ones: other tests register methods of their own in this process.
  for (const auto& method : detail::builtin_methods()) registered.emplace_back(method.name);
  std::sort(documented.begin(), documented.end());
  std::sort(registered.begin(), registered.end());
  CHECK(documented == registered);
}
