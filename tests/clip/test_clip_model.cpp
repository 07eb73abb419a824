// The CLIP model of examples/clip_continual: Hugging Face names and shapes, config.json, checkpoint
// round trips, and (with tests/reference/clip_reference.py) logits against an independent
// functional PyTorch computation from the saved files.

#include <torch/torch.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include <catch2/catch.hpp>

#include "../../examples/clip_continual/clip/checkpoint.hpp"
#include "alloy/torch.hpp"
#include "tensor_builders.hpp"
#include "test_folder.hpp"

using namespace alloy_clip;

namespace {

clip_config tiny_config() {
  clip_config c;
  c.text.vocab_size = 99;
  c.text.hidden_size = 32;
  c.text.intermediate_size = 48;
  c.text.num_hidden_layers = 2;
  c.text.num_attention_heads = 4;
  c.text.max_position_embeddings = 12;
  c.text.eos_token_id = 98;
  c.text.bos_token_id = 97;
  c.vision.hidden_size = 40;
  c.vision.intermediate_size = 56;
  c.vision.num_hidden_layers = 3;
  c.vision.num_attention_heads = 5;
  c.vision.image_size = 28;
  c.vision.patch_size = 7;
  c.vision.num_channels = 3;
  c.vision.hidden_act = "gelu";
  c.projection_dim = 24;
  return c;
}

// Fixed inputs: two images, three texts ending in the end-of-text id, padded after it with 0.
::torch::Tensor tiny_pixels() { return ::torch::linspace(-1, 1, 2 * 3 * 28 * 28).view({2, 3, 28, 28}).sin(); }
::torch::Tensor tiny_ids() {
  return ::torch::tensor({97, 5, 6, 7, 98, 0, 0, 97, 40, 98, 0, 0, 97, 1, 2, 3, 4, 98}, ::torch::kInt64).view({3, 6});
}

}  // namespace

TEST_CASE("CLIP's parameters have Hugging Face's names and shapes", "[clip][model]") {
  ::torch::manual_seed(1);
  clip_model model(tiny_config());
  const auto parameters = model->named_parameters();
  // Per layer: q, k, v, out projections (weight, bias), two layer norms, fc1 and fc2.
  CHECK(parameters.size() == static_cast<std::size_t>((2 + 2 * 16 + 2) + (3 + 2 + 3 * 16 + 2) + 3));
  const auto shape_of = [&](const std::string& name) {
    const ::torch::Tensor* p = parameters.find(name);
    INFO(name);
    REQUIRE(p != nullptr);
    return std::vector<std::int64_t>(p->sizes().begin(), p->sizes().end());
  };
  using sizes = std::vector<std::int64_t>;
  CHECK(shape_of("text_model.embeddings.token_embedding.weight") == sizes{99, 32});
  CHECK(shape_of("text_model.embeddings.position_embedding.weight") == sizes{12, 32});
  CHECK(shape_of("text_model.encoder.layers.1.self_attn.q_proj.weight") == sizes{32, 32});
  CHECK(shape_of("text_model.encoder.layers.1.self_attn.out_proj.bias") == sizes{32});
  CHECK(shape_of("text_model.encoder.layers.0.mlp.fc1.weight") == sizes{48, 32});
  CHECK(shape_of("text_model.encoder.layers.0.layer_norm2.weight") == sizes{32});
  CHECK(shape_of("text_model.final_layer_norm.bias") == sizes{32});
  CHECK(shape_of("vision_model.embeddings.class_embedding") == sizes{40});
  CHECK(shape_of("vision_model.embeddings.patch_embedding.weight") == sizes{40, 3, 7, 7});
  CHECK(shape_of("vision_model.embeddings.position_embedding.weight") == sizes{17, 40});
  CHECK(shape_of("vision_model.pre_layrnorm.weight") == sizes{40});
  CHECK(shape_of("vision_model.encoder.layers.2.mlp.fc2.weight") == sizes{40, 56});
  CHECK(shape_of("vision_model.post_layernorm.bias") == sizes{40});
  CHECK(shape_of("visual_projection.weight") == sizes{24, 40});
  CHECK(shape_of("text_projection.weight") == sizes{24, 32});
  CHECK(shape_of("logit_scale").empty());
  CHECK(parameters.find("visual_projection.bias") == nullptr);
}

TEST_CASE("config.json: transformers' fields, defaults and errors that name the field", "[clip][config]") {
  const clip_config defaults = clip_config::from_json(nlohmann::json::object());
  CHECK(defaults.text.vocab_size == 49408);
  CHECK(defaults.vision.patch_size == 32);
  CHECK(defaults.projection_dim == 512);
  const clip_config again = clip_config::from_json(tiny_config().to_json());
  CHECK(again.to_json() == tiny_config().to_json());
  CHECK(again.vision.hidden_act == "gelu");

  nlohmann::json bad = tiny_config().to_json();
  bad["vision_config"]["num_attention_heads"] = 3;
  CHECK_THROWS_WITH(clip_config::from_json(bad), Catch::Contains("vision_config.hidden_size 40 is not divisible"));
  bad = tiny_config().to_json();
  bad["text_config"]["hidden_act"] = "relu";
  CHECK_THROWS_WITH(clip_config::from_json(bad), Catch::Contains("text_config.hidden_act 'relu'"));
  bad = tiny_config().to_json();
  bad["text_config"]["vocab_size"] = "many";
  CHECK_THROWS_WITH(clip_config::from_json(bad), Catch::Contains("'vocab_size'") && Catch::Contains("wrong type"));
  bad = tiny_config().to_json();
  bad["vision_config"]["image_size"] = 30;
  CHECK_THROWS_WITH(clip_config::from_json(bad), Catch::Contains("image_size 30"));
}

TEST_CASE("a saved CLIP loads back to the same logits; mismatched checkpoints are refused", "[clip][checkpoint]") {
  alloy::testing::test_folder folder;
  ::torch::manual_seed(2);
  clip_model model(tiny_config());
  ::torch::NoGradGuard no_grad;
  const ::torch::Tensor logits = model->forward(tiny_pixels(), tiny_ids());
  CHECK(logits.sizes() == ::torch::IntArrayRef({2, 3}));
  save_pretrained(model, folder.path() / "tiny");
  clip_model loaded = load_pretrained(folder.path() / "tiny");
  CHECK(::torch::equal(loaded->forward(tiny_pixels(), tiny_ids()), logits));

  // A checkpoint of another shape names the tensor.
  clip_config wider = tiny_config();
  wider.projection_dim = 16;
  clip_model other(wider);
  save_pretrained(other, folder.path() / "other");
  std::filesystem::copy_file(folder.path() / "tiny" / "config.json", folder.path() / "other" / "config.json",
                             std::filesystem::copy_options::overwrite_existing);
  CHECK_THROWS_WITH(load_pretrained(folder.path() / "other"), Catch::Contains("projection.weight"));
}

TEST_CASE("text is pooled at the end-of-text token and never sees later tokens", "[clip][model]") {
  ::torch::manual_seed(3);
  clip_model model(tiny_config());
  ::torch::NoGradGuard no_grad;
  const ::torch::Tensor ids = tiny_ids();
  ::torch::Tensor changed = ids.clone();
  changed.index_put_({0, 5}, 42);  // after the end-of-text token of text 0: causal mask and pooling ignore it
  CHECK(::torch::allclose(model->text_features(ids), model->text_features(changed)));
  changed.index_put_({0, 1}, 42);  // before it: the features change
  CHECK_FALSE(::torch::allclose(model->text_features(ids), model->text_features(changed)));
}

// Writes a model folder, its inputs and its logits for tests/reference/clip_reference.py.
TEST_CASE("write the CLIP reference case", "[clip][reference-writer]") {
  const char* dir = std::getenv("ALLOY_CLIP_REFERENCE_DIR");
  if (dir == nullptr) {
    WARN("ALLOY_CLIP_REFERENCE_DIR is not set: nothing written");
    return;
  }
  ::torch::manual_seed(4);
  clip_model model(tiny_config());
  {
    ::torch::NoGradGuard no_grad;  // a non-trivial logit scale and layer norms, as after training
    model->logit_scale.fill_(2.0);
    for (auto& item : model->named_parameters()) {
      if (item.key().find("norm") != std::string::npos) item.value().add_(0.1 * ::torch::randn_like(item.value()));
    }
  }
  const std::filesystem::path folder(dir);
  save_pretrained(model, folder / "model");
  ::torch::NoGradGuard no_grad;
  const ::torch::Tensor pixels = tiny_pixels().contiguous(), ids = tiny_ids().contiguous();
  const ::torch::Tensor logits = model->forward(pixels, ids).contiguous();
  const alloy::torch_adapter::tensor_store io({{"pixels", pixels}, {"ids", ids}, {"logits", logits}});
  alloy::save_safetensors(folder / "io.safetensors", io, {}, /*replace=*/true);
}

TEST_CASE("LoRA keeps transformers' names, starts at the base model and trains only its factors", "[clip][lora]") {
  ::torch::manual_seed(5);
  clip_model model(tiny_config());
  ::torch::Tensor before;
  {
    ::torch::NoGradGuard no_grad;
    before = model->forward(tiny_pixels(), tiny_ids());
  }
  const std::size_t adapted = model->add_lora({.rank = 4, .alpha = 8.0}, {"q_proj", "v_proj", "fc1"}, true, false);
  CHECK(adapted == 2 * 3);  // text tower only: 2 layers x 3 targets
  const auto parameters = model->named_parameters();
  CHECK(parameters.find("text_model.encoder.layers.0.self_attn.q_proj.weight") != nullptr);  // base names unchanged
  const ::torch::Tensor* a = parameters.find("text_model.encoder.layers.1.mlp.fc1.lora_A.weight");
  const ::torch::Tensor* b = parameters.find("text_model.encoder.layers.1.mlp.fc1.lora_B.weight");
  REQUIRE(a != nullptr);
  REQUIRE(b != nullptr);
  CHECK(a->sizes() == ::torch::IntArrayRef({4, 32}));   // PEFT layout: A [r, in], B [out, r]
  CHECK(b->sizes() == ::torch::IntArrayRef({48, 4}));
  CHECK(parameters.find("vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight") == nullptr);
  const auto trainable = model->trainable_parameters();
  CHECK(trainable.size() == 2 * adapted);
  for (const auto& [name, tensor] : trainable) CHECK(name.find(".lora_") != std::string::npos);
  {
    ::torch::NoGradGuard no_grad;
    CHECK(::torch::equal(model->forward(tiny_pixels(), tiny_ids()), before));  // B = 0: the base model
  }

  // One step moves the LoRA factors only.
  const alloy::memory_store frozen = alloy::torch_adapter::snapshot(*model);
  ::torch::optim::SGD sgd(model->parameters(), ::torch::optim::SGDOptions(0.1));
  const ::torch::Tensor target = ::torch::tensor({0, 1}, ::torch::kInt64);
  for (int i = 0; i < 2; ++i) {
    sgd.zero_grad();
    ::torch::nn::functional::cross_entropy(model->forward(tiny_pixels(), tiny_ids()), target).backward();
    sgd.step();
  }
  const alloy::memory_store after = alloy::torch_adapter::snapshot(*model);
  std::size_t changed = 0;
  for (const auto& name : after.names()) {
    const bool same = alloy::testing::same_bytes(frozen.view(name), after.view(name));
    if (!same) ++changed;
    if (name.find(".lora_") == std::string::npos) CHECK(same);
  }
  CHECK(changed > 0);

  // Folding B A into W gives the same layer output.
  auto layer = std::dynamic_pointer_cast<lora_linear_impl>(
      model->named_modules()["text_model.encoder.layers.1.mlp.fc1"]);
  REQUIRE(layer);
  ::torch::NoGradGuard no_grad;
  const ::torch::Tensor x = ::torch::randn({5, 32});
  CHECK(::torch::allclose(layer->forward(x), ::torch::nn::functional::linear(x, layer->merged_weight(), layer->bias),
                          1e-5, 1e-6));
  CHECK_THROWS_WITH(layer->enable_lora({}), Catch::Contains("already"));
  CHECK_THROWS_WITH(model->add_lora({}, {"no_such_layer"}), Catch::Contains("no linear layer"));
}

TEST_CASE("the LoRA factors are a parameter store that alloy merges and aligns", "[clip][lora]") {
  ::torch::manual_seed(6);
  clip_model model(tiny_config());
  model->add_lora({.rank = 2, .alpha = 4.0});
  alloy::torch_adapter::tensor_store lora(model->trainable_parameters());
  CHECK(lora.size() == 2u * (2 + 3) * 2);  // q_proj and v_proj of 2 text and 3 vision layers, A and B
  alloy::continual_merger merger(alloy::copy_store(lora));
  {
    ::torch::NoGradGuard no_grad;
    for (auto& [name, tensor] : model->trainable_parameters()) tensor.fill_(1.0f);
  }
  merger.end_task(alloy::cpu_backend{}, lora);  // the first task: G = T
  alloy::torch_adapter::pam_aligner aligner({.p = 1.0});
  aligner.set_global(merger.global());
  {
    ::torch::NoGradGuard no_grad;
    for (auto& [name, tensor] : model->trainable_parameters()) tensor.fill_(-1.0f);
  }
  const alloy::pam_report report = aligner.align(*model);
  CHECK(report.total_reset == alloy::total_bytes(lora) / 4);  // every entry opposed G: all reset
  for (const auto& [name, tensor] : model->trainable_parameters()) CHECK(tensor.abs().sum().item<float>() == 0.0f);
}
