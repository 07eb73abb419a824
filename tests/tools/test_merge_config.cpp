// alloy-merge's config reader: the forms mergekit configs use, and the refusals.

#include <optional>
#include <string>

#include <catch2/catch.hpp>

#include "merge_config.hpp"

using alloy::tools::parse_merge_config;

namespace {

std::string refusal(const std::string& yaml) {
  try {
    (void)parse_merge_config(yaml, "test.yml");
  } catch (const alloy::error& e) {
    CHECK(e.code() == alloy::error_code::invalid_argument);
    return e.what();
  }
  FAIL("the config was accepted: " << yaml);
  return {};
}

}  // namespace

TEST_CASE("a mergekit TIES config reads with gradients, filters and booleans", "[tools][config]") {
  const auto config = parse_merge_config(R"(
models:
  - model: base
  - model: math
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: code+adapters/code
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
merge_method: ties
base_model: base
parameters:
  normalize: true
  int8_mask: false
dtype: float16
tokenizer_source: base
)");
  CHECK(config.method == "ties");
  REQUIRE(config.base_model);
  CHECK(config.base_model->model == "base");
  REQUIRE(config.models.size() == 3);
  CHECK(config.models[2].reference.model == "code");
  CHECK(config.models[2].reference.adapter == "adapters/code");
  const auto& density = config.models[1].parameters.at("density");
  CHECK(density.evaluate("x", 0.5) == Approx(0.7));
  CHECK(density.evaluate("x", 0.75) == Approx(0.4));
  const auto& weight = config.models[2].parameters.at("weight");
  CHECK(weight.evaluate("model.layers.0.mlp.up_proj.weight", 0) == Approx(0.5));
  CHECK(weight.evaluate("model.layers.0.self_attn.q_proj.weight", 0) == Approx(0.0));
  CHECK(config.parameters.at("normalize").evaluate("x", 0) == 1.0);
  CHECK(config.parameters.at("int8_mask").evaluate("x", 0) == 0.0);
  CHECK(config.compute_dtype == alloy::dtype::f16);
  CHECK_FALSE(config.out_dtype);
}

TEST_CASE("a single {filter, value} and mergekit's expanded model reference are read", "[tools][config]") {
  const auto config = parse_merge_config(R"(
merge_method: slerp
base_model: {model: {path: a}}
models:
  - model: {model: {path: b}, lora: {path: l}}
parameters:
  t: {filter: self_attn, value: [0, 1]}
out_dtype: bf16
)");
  CHECK(config.base_model->model == "a");
  CHECK(config.models[0].reference.text() == "b+l");
  CHECK(config.parameters.at("t").evaluate("x.self_attn.q", 1.0) == 1.0);
  CHECK_FALSE(config.parameters.at("t").evaluate("x.mlp", 1.0));
  CHECK(config.out_dtype == alloy::dtype::bf16);
}

TEST_CASE("config errors name the key at fault", "[tools][config]") {
  const std::string models = "models:\n  - model: m\n    parameters: {weight: 1}\n";
  CHECK_THAT(refusal("merge_method: frobnicate\n" + models), Catch::Contains("merge_method") && Catch::Contains("frobnicate"));
  CHECK_THAT(refusal(models), Catch::Contains("merge_method: is missing"));
  CHECK_THAT(refusal("merge_method: linear\n"), Catch::Contains("models: is missing"));
  CHECK_THAT(refusal("merge_method: linear\nslices: []\n" + models), Catch::Contains("slices"));
  CHECK_THAT(refusal("merge_method: linear\nchat_template: [x]\n" + models), Catch::Contains("chat_template"));
  CHECK_THAT(refusal("merge_method: linear\n" + models + "tokenizer_source: union\ntokenizer: {source: base}\n"),
             Catch::Contains("not both"));
  CHECK_THAT(refusal("merge_method: linear\n" + models + "tokenizer:\n  tokens:\n    x: {force: true}\n"),
             Catch::Contains("tokenizer.tokens.x") && Catch::Contains("needs a source"));
  CHECK_THAT(refusal("merge_method: linear\n" + models + "tokenizer:\n  tokens:\n    x: {source: {kind: model_token, model: m}}\n"),
             Catch::Contains("exactly one of token and token_id"));
  CHECK_THAT(refusal("merge_method: linear\n" + models + "tokenizer: {pad_to_multiple_of: 0}\n"),
             Catch::Contains("tokenizer.pad_to_multiple_of"));
  CHECK_THAT(refusal("merge_method: linear\n" + models + "tokenizer: {sauce: union}\n"), Catch::Contains("tokenizer.sauce"));
  CHECK_THAT(refusal("merge_method: linear\nmerge_methd: x\n" + models), Catch::Contains("merge_methd: unknown key"));
  CHECK_THAT(refusal("merge_method: linear\nmerge_method: ties\n" + models), Catch::Contains("written twice"));
  CHECK_THAT(refusal("merge_method: ties\n" + models), Catch::Contains("base_model: is missing"));
  CHECK_THAT(refusal("merge_method: linear\nmodels:\n  - model: m\n    parameters: {weight: abc}\n"),
             Catch::Contains("models[0].parameters.weight") && Catch::Contains("'abc'"));
  CHECK_THAT(refusal("merge_method: linear\nmodels:\n  - model: m\n    parameters: {weight: [1, .inf]}\n"),
             Catch::Contains("models[0].parameters.weight[1]"));
  CHECK_THAT(refusal("merge_method: linear\nmodels:\n  - model: m\n    parameters: {normalize: true}\n"),
             Catch::Contains("top-level parameters"));
  CHECK_THAT(refusal("merge_method: ties\nbase_model: b\nmodels:\n  - model: m\n    parameters: {density: -0.1}\n"),
             Catch::Contains("models[0].parameters.density") && Catch::Contains("[0, 1]"));
  CHECK_THAT(refusal("merge_method: linear\n" + models + "dtype: int8\n"), Catch::Contains("dtype"));
  CHECK_THAT(refusal("merge_method: linear\nmodels:\n  - model: m\n  - model: m\n"), Catch::Contains("listed twice"));
  CHECK_THAT(refusal("merge_method: linear\nmodels: [\n"), Catch::Contains("not valid YAML at line"));
  CHECK_THAT(refusal("- just\n- a list\n"), Catch::Contains("expected a mapping"));
  CHECK_THAT(refusal("merge_method: linear\nmodels:\n  - model: m+\n"), Catch::Contains("empty adapter"));
}

TEST_CASE("hostile YAML is refused without exhausting the stack or memory", "[tools][config][hostile]") {
  // Nesting a hundred thousand deep: yaml-cpp's depth guard refuses it as invalid YAML.
  CHECK_THAT(refusal("merge_method: linear\nmodels: " + std::string(100000, '[') + std::string(100000, ']') + "\n"),
             Catch::Contains("not valid YAML"));
  // A billion items through aliases: the reader walks only the keys it knows, so the fan-out is
  // never expanded, and the list's first entry is refused for what it is.
  std::string laughs = "merge_method: linear\nx: &a0 [m, m, m, m, m, m, m, m, m, m]\n";
  for (char i = '1'; i <= '8'; ++i) {
    const char previous = static_cast<char>(i - 1);
    laughs.append("x").append(1, i).append(": &a").append(1, i).append(" [");
    for (int k = 0; k < 10; ++k) laughs.append(k ? ", *a" : "*a").append(1, previous);
    laughs.append("]\n");
  }
  CHECK_THAT(refusal(laughs), Catch::Contains("unknown key"));
  CHECK_THAT(refusal("merge_method: linear\nmodels:\n  - &m {model: m, parameters: {weight: *m}}\n"),
             Catch::Contains("models[0].parameters.weight"));
  // Over the size cap: refused before YAML is parsed.
  const std::string huge = "merge_method: linear\n#" + std::string(alloy::tools::max_config_bytes, 'x') + "\n";
  try {
    (void)parse_merge_config(huge, "huge.yml");
    FAIL("a config over the cap was read");
  } catch (const alloy::error& e) {
    CHECK(e.code() == alloy::error_code::limit);
    CHECK_THAT(e.what(), Catch::Contains("huge.yml") && Catch::Contains("too large for a merge config"));
  }
  // Binary garbage and NUL bytes.
  CHECK_FALSE(refusal(std::string("merge_method: linear\0\xff\xfe", 23)).empty());
}

TEST_CASE("typed parameters: a choice by its word, booleans and whole numbers checked", "[tools][config]") {
  const auto config = parse_merge_config(R"(
merge_method: dare_ties
base_model: base
models:
  - model: a
    parameters: {weight: 1, density: 0.5}
parameters:
  consensus: count
  seed: 42
  normalize: true
)",
                                         "typed.yml");
  REQUIRE(config.parameters.at("consensus").word() == std::optional<std::string>("count"));
  CHECK(config.parameters.at("seed").evaluate("w", 0) == 42.0);
  CHECK(config.parameters.at("normalize").evaluate("w", 0) == 1.0);
  const std::string head = "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1}\n";
  CHECK_THAT(refusal(head + "parameters: {consensus: majority}\n"),
             Catch::Contains("parameters.consensus") && Catch::Contains("one of sum, count"));
  CHECK_THAT(refusal(head + "parameters: {normalize: 2}\n"),
             Catch::Contains("parameters.normalize") && Catch::Contains("a boolean"));
  CHECK_THAT(refusal("merge_method: dare_ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1}\n"
                     "parameters: {seed: 1.5}\n"),
             Catch::Contains("parameters.seed") && Catch::Contains("whole number"));
  CHECK_THAT(refusal("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\nparameters: {consensus: sum}\n"),
             Catch::Contains("consensus"));
}

TEST_CASE("slices are read as mergekit writes them", "[tools][config][slices]") {
  const auto config = parse_merge_config(R"(
slices:
  - sources:
      - model: a
        layer_range: [0, 24]
      - model: b
        layer_range: [0, 24]
    parameters:
      t:
        - filter: self_attn
          value: [0, 0.5, 1]
        - value: 0.5
  - sources:
      - {model: b, layer_range: [8, 24]}
    base_model: b
    residual_weight: 0.2
merge_method: slerp
base_model: a
)");
  REQUIRE(config.slices.size() == 2);
  CHECK(config.models.empty());
  CHECK(config.slices[0].sources[1].reference.model == "b");
  CHECK(config.slices[0].sources[1].end_layer == 24u);
  CHECK(config.slices[0].parameters.at("t").evaluate("x.self_attn.q", 0.5) == 0.5);
  CHECK(config.slices[1].sources[0].first_layer == 8u);
  CHECK(config.slices[1].base_model->model == "b");
  CHECK(config.referenced_models().size() == 2);

  const std::string source = "slices:\n  - sources:\n      - {model: a, layer_range: [0, 2]";
  CHECK_THAT(refusal("merge_method: passthrough\n" + source + "}\nmodules: {}\n"), Catch::Contains("modules"));
  CHECK_THAT(refusal("merge_method: passthrough\nslices:\n  - sources:\n      - {model: a, layer_range: [0]}\n"),
             Catch::Contains("slices[0].sources[0].layer_range") && Catch::Contains("[first, end]"));
  CHECK_THAT(refusal("merge_method: passthrough\nslices:\n  - sources:\n      - {model: a, layer_range: [0, -1]}\n"),
             Catch::Contains("slices[0].sources[0].layer_range[1]"));
  CHECK_THAT(refusal("merge_method: passthrough\n" + source + ", layers: 3}\n"),
             Catch::Contains("slices[0].sources[0].layers: unknown key"));
  CHECK_THAT(refusal("merge_method: ties\nbase_model: a\n" + source + ", parameters: {normalize: true}}\n"),
             Catch::Contains("slices[0].sources[0].parameters.normalize") && Catch::Contains("top-level"));
  CHECK_THAT(refusal("merge_method: passthrough\nslices:\n  - base_model: a\n"), Catch::Contains("slices[0]: has no sources"));
  CHECK_THAT(refusal("merge_method: passthrough\nslices: []\n"), Catch::Contains("slices: the list is empty"));
  // A base on every slice stands for the config's.
  CHECK(parse_merge_config("merge_method: ties\n" + source + "}\n    base_model: a\n").slices.size() == 1);
}

TEST_CASE("mergekit's modules read with models or slices and their own parameters", "[tools][config]") {
  const auto config = parse_merge_config(R"(
modules:
  text_decoder:
    slices:
      - sources:
          - {model: a, layer_range: [0, 8]}
          - {model: b, layer_range: [0, 8]}
    parameters:
      t: [0, 1]
  vision_tower:
    models:
      - model: a
      - model: b
    parameters: {t: 0.3}
  projector:
    weight_prefix: model.multi_modal_projector.
    models: [{model: a}]
merge_method: slerp
base_model: a
parameters: {t: 0.5}
)");
  REQUIRE(config.modules.size() == 3);
  CHECK(config.models.empty());
  CHECK(config.slices.empty());
  CHECK(config.modules[0].name == "text_decoder");
  REQUIRE(config.modules[0].slices.size() == 1);
  CHECK(config.modules[0].slices[0].sources[1].end_layer == 8u);
  CHECK(config.modules[0].parameters.at("t").evaluate("x", 1.0) == 1.0);
  CHECK(config.modules[1].models.size() == 2);
  CHECK(config.modules[1].parameters.at("t").evaluate("x", 0.0) == 0.3);
  CHECK(config.modules[2].weight_prefix == "model.multi_modal_projector.");
  CHECK(config.referenced_models().size() == 2);
}

TEST_CASE("modules errors name the module and the key", "[tools][config]") {
  const std::string two = "    models: [{model: a}, {model: b}]\n";
  CHECK_THAT(refusal("merge_method: linear\nmodules:\n  text_decoder:\n    parameters: {weight: 1}\n"),
             Catch::Contains("modules.text_decoder: has neither models nor slices"));
  CHECK_THAT(refusal("merge_method: linear\nmodules:\n  text_decoder:\n" + two +
                     "    slices: [{sources: [{model: a, layer_range: [0, 1]}]}]\n"),
             Catch::Contains("modules.text_decoder: has both"));
  CHECK_THAT(refusal("merge_method: linear\nmodules:\n  text_decoder:\n" + two + "    layers: 2\n"),
             Catch::Contains("modules.text_decoder.layers: unknown key"));
  CHECK_THAT(refusal("merge_method: linear\nmodules:\n  text_decoder:\n" + two + "    weight_prefix: ''\n"),
             Catch::Contains("modules.text_decoder.weight_prefix: is empty"));
  CHECK_THAT(refusal("merge_method: linear\nmodules:\n  text_decoder:\n    slices: [{sources: [{model: a}]}]\n"),
             Catch::Contains("modules.text_decoder.slices[0].sources[0]: has no layer_range"));
  CHECK_THAT(refusal("merge_method: linear\nmodules:\n  text_decoder:\n" + two + "    parameters: {density: 1}\n"),
             Catch::Contains("modules.text_decoder.parameters.density"));
  CHECK_THAT(refusal("merge_method: linear\nmodules: [a, b]\n"), Catch::Contains("modules: expected a mapping"));
  CHECK_THAT(refusal("merge_method: linear\nmodules: {}\n"), Catch::Contains("modules: no modules given"));
  CHECK_THAT(refusal("merge_method: ties\nmodules:\n  text_decoder:\n" + two), Catch::Contains("base_model: is missing"));
  CHECK_THAT(refusal("merge_method: linear\ntokenizer_source: union\nmodules:\n  text_decoder:\n" + two),
             Catch::Contains("tokenizer_source") && Catch::Contains("modules"));
}

TEST_CASE("tokenizer_source, the tokenizer section and chat_template are read as mergekit writes them", "[tools][config]") {
  const std::string models = "models:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 1}\n";
  using alloy::tools::token_embedding_rule;
  using alloy::tools::tokenizer_settings;
  const auto plain = alloy::tools::parse_merge_config("merge_method: linear\n" + models + "tokenizer_source: union\n");
  REQUIRE(plain.tokenizer);
  CHECK(plain.tokenizer->source == tokenizer_settings::kind::union_of_models);
  const auto named = alloy::tools::parse_merge_config("merge_method: linear\n" + models + "tokenizer_source: b\n");
  CHECK(named.tokenizer->source == tokenizer_settings::kind::model);
  CHECK(named.tokenizer->model.model == "b");
  CHECK_FALSE(alloy::tools::parse_merge_config("merge_method: linear\n" + models).tokenizer);
  const auto section = alloy::tools::parse_merge_config(
      "merge_method: linear\n" + models +
      "tokenizer:\n  pad_to_multiple_of: 64\n  tokens:\n    <|im_start|>: {source: a, force: true}\n"
      "    <|im_end|>:\n      source: {kind: model_token, model: b, token: </s>}\n    <pad>: {source: {kind: zero}}\n"
      "chat_template: chatml\n");
  REQUIRE(section.tokenizer);
  CHECK(section.tokenizer->source == tokenizer_settings::kind::union_of_models);  // mergekit's default
  CHECK(section.tokenizer->pad_to_multiple_of == 64u);
  REQUIRE(section.tokenizer->tokens.size() == 3);
  CHECK(section.tokenizer->tokens[0].first == "<|im_start|>");
  CHECK(section.tokenizer->tokens[0].second.force);
  CHECK(section.tokenizer->tokens[0].second.model.model == "a");
  CHECK(section.tokenizer->tokens[1].second.source == token_embedding_rule::kind::model_token);
  CHECK(section.tokenizer->tokens[1].second.token == "</s>");
  CHECK(section.tokenizer->tokens[2].second.source == token_embedding_rule::kind::zero);
  CHECK(section.chat_template == "chatml");
}
