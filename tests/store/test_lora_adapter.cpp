// PEFT LoRA adapters folded into weights: W + alpha/r B A, by hand on small matrices.

#include <array>
#include <fstream>

#include <catch2/catch.hpp>

#include "alloy/alloy.hpp"
#include "test_folder.hpp"

namespace {

void write_adapter(const std::filesystem::path& folder, const std::string& config, const alloy::memory_store& tensors) {
  std::filesystem::create_directories(folder);
  std::ofstream(folder / "adapter_config.json") << config;
  alloy::save_safetensors(folder / "adapter_model.safetensors", tensors);
}

}  // namespace

TEST_CASE("a LoRA adapter adds alpha/r B A to the weights it names", "[merge][lora]") {
  alloy::testing::test_folder dir;
  alloy::memory_store base;
  auto w = base.insert("layer.q.weight", alloy::dtype::f32, alloy::shape{2, 3});
  auto untouched = base.insert("layer.k.weight", alloy::dtype::f32, alloy::shape{2, 2});
  for (std::size_t i = 0; i < 6; ++i) w.as<float>()[i] = static_cast<float>(i);
  untouched.as<float>()[0] = 7.0f;
  alloy::memory_store adapter;
  auto a = adapter.insert("base_model.model.layer.q.lora_A.weight", alloy::dtype::f32, alloy::shape{1, 3});
  auto b = adapter.insert("base_model.model.layer.q.lora_B.weight", alloy::dtype::f32, alloy::shape{2, 1});
  const std::array<float, 3> a_values{1, 2, 3};
  const std::array<float, 2> b_values{1, -1};
  std::copy(a_values.begin(), a_values.end(), a.as<float>().begin());
  std::copy(b_values.begin(), b_values.end(), b.as<float>().begin());
  write_adapter(dir.path() / "adapter", R"({"peft_type": "LORA", "r": 1, "lora_alpha": 2})", adapter);

  alloy::lora_applied_store store(base, alloy::peft_lora_adapter::open(dir.path() / "adapter"));
  const auto q = store.view("layer.q.weight").as<float>();
  // W + 2 * [1, -1]^T [1, 2, 3]
  const std::array<float, 6> expected{0 + 2, 1 + 4, 2 + 6, 3 - 2, 4 - 4, 5 - 6};
  for (std::size_t i = 0; i < 6; ++i) CHECK(q[i] == expected[i]);
  CHECK(store.view("layer.k.weight").as<float>()[0] == 7.0f);
  CHECK(store.view("layer.k.weight").data() == store.base().view("layer.k.weight").data());  // not copied
  store.release("layer.q.weight");
  CHECK(store.view("layer.q.weight").as<float>()[1] == expected[1]);  // computed again

  SECTION("use_rslora scales by alpha/sqrt(r), fan_in_fan_out transposes") {
    alloy::memory_store conv_base;
    conv_base.insert("c.weight", alloy::dtype::f32, alloy::shape{3, 2});  // Conv1D: in x out
    write_adapter(dir.path() / "conv",
                  R"({"peft_type": "LORA", "r": 1, "lora_alpha": 3, "use_rslora": true, "fan_in_fan_out": true})",
                  [&] {
                    alloy::memory_store t;
                    std::ranges::copy(a_values, t.insert("base_model.model.c.lora_A.weight", alloy::dtype::f32,
                                                         alloy::shape{1, 3}).as<float>().begin());
                    std::ranges::copy(b_values, t.insert("base_model.model.c.lora_B.weight", alloy::dtype::f32,
                                                         alloy::shape{2, 1}).as<float>().begin());
                    return t;
                  }());
    alloy::lora_applied_store conv(conv_base, alloy::peft_lora_adapter::open(dir.path() / "conv"));
    const auto c = conv.view("c.weight").as<float>();
    // (B A)^T * 3 / sqrt(1): row i = a_i * [1, -1] * 3
    CHECK(c[0] == 3.0f);
    CHECK(c[1] == -3.0f);
    CHECK(c[4] == 9.0f);
    CHECK(c[5] == -9.0f);
  }

  SECTION("an adapter for a tensor the model lacks, or with a shape that does not fit, is refused") {
    alloy::memory_store other;
    other.insert("layer.q.weight", alloy::dtype::f32, alloy::shape{3, 3});
    CHECK_THROWS_WITH(alloy::lora_applied_store(other, alloy::peft_lora_adapter::open(dir.path() / "adapter")),
                      Catch::Contains("layer.q.weight") && Catch::Contains("[2, 3]"));
    alloy::memory_store none;
    CHECK_THROWS_WITH(alloy::lora_applied_store(none, alloy::peft_lora_adapter::open(dir.path() / "adapter")),
                      Catch::Contains("does not have"));
    CHECK_THROWS_WITH(alloy::peft_lora_adapter::open(dir.path() / "missing"), Catch::Contains("not a folder"));
  }
}

TEST_CASE("hostile adapter configs are refused with bounded messages", "[merge][lora][hostile]") {
  alloy::testing::test_folder dir;
  alloy::memory_store tensors;
  tensors.insert("base_model.model.x.lora_A.weight", alloy::dtype::f32, alloy::shape{1, 2});
  tensors.insert("base_model.model.x.lora_B.weight", alloy::dtype::f32, alloy::shape{2, 1});
  int written = 0;
  const auto refusal = [&](const std::string& config) -> std::string {
    std::string name = "a";
    name += std::to_string(written++);
    const auto folder = dir.path() / name;
    write_adapter(folder, config, tensors);
    try {
      (void)alloy::peft_lora_adapter::open(folder);
    } catch (const alloy::error& e) {
      return e.what();
    }
    FAIL("the adapter config was accepted");
    return {};
  };
  // A lora_alpha nested 200,000 deep: refused without recursing through it.
  const std::string deep = refusal(R"({"r": 1, "lora_alpha": )" + std::string(200000, '[') + std::string(200000, ']') + "}");
  CHECK_THAT(deep, Catch::Contains("lora_alpha is [[[[...]]]], expected a positive number"));
  CHECK(deep.size() < 400);
  // A pattern key with control characters is escaped.
  CHECK_THAT(refusal("{\"r\": 1, \"lora_alpha\": 2, \"alpha_pattern\": {\"\\u001b[2J\": -1}}"),
             Catch::Contains("alpha_pattern '\\x1b[2J' is -1"));
  CHECK_THAT(refusal(R"({"r": 1, "lora_alpha": 1e400})"), Catch::Contains("not valid JSON"));
  // Over the size cap: refused before it is parsed.
  write_adapter(dir.path() / "big", "{", tensors);
  std::filesystem::resize_file(dir.path() / "big" / "adapter_config.json", alloy::peft_lora_adapter::max_config_bytes + 1);
  CHECK_THROWS_WITH(alloy::peft_lora_adapter::open(dir.path() / "big"), Catch::Contains("too large for an adapter config"));
}
