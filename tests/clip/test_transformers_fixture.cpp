// Agreement with transformers itself: the fixture that tests/reference/make_clip_fixture.py writes
// with transformers (a small random CLIPModel saved by save_pretrained, a small vocabulary, the ids
// CLIPTokenizer gives eight texts, and the model's outputs on fixed images). alloy must load the
// folder unchanged, give the same ids exactly and the same logits to 1e-4.
//
// transformers is only on the GPU machine. Until a session with it generates the fixture into
// tests/fixtures/clip_transformers and commits it, this test says so and checks nothing.

#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../../examples/clip_continual/clip/pretrain.hpp"
#include "alloy/torch.hpp"

using namespace alloy_clip;

namespace {

::torch::Tensor read_tensor(const alloy::safetensors_store& store, const std::string& name) {
  const auto view = store.view(name);
  std::vector<std::int64_t> shape(view.shape().begin(), view.shape().end());
  if (view.dtype() == alloy::dtype::i64) {
    return ::torch::from_blob(const_cast<std::int64_t*>(view.as<std::int64_t>().data()), shape, ::torch::kInt64).clone();
  }
  return ::torch::from_blob(const_cast<float*>(view.as<float>().data()), shape, ::torch::kFloat32).clone();
}

}  // namespace

TEST_CASE("the transformers fixture: same ids and logits as CLIPTokenizer and CLIPModel", "[clip][transformers]") {
  const std::filesystem::path fixture = ALLOY_CLIP_FIXTURE_DIR;
  if (!std::filesystem::exists(fixture / "io.safetensors")) {
    WARN("no transformers fixture at " << fixture.string()
                                       << ": run tests/reference/make_clip_fixture.py where transformers is installed");
    return;
  }
  clip_bundle clip = load_clip_folder(fixture / "model");
  std::ifstream in(fixture / "texts.json");
  const nlohmann::json texts = nlohmann::json::parse(in);
  const auto expected_ids = texts["ids"].get<std::vector<std::vector<std::int64_t>>>();
  const auto strings = texts["texts"].get<std::vector<std::string>>();
  REQUIRE(strings.size() == expected_ids.size());
  for (std::size_t i = 0; i < strings.size(); ++i) {
    INFO("text " << i << ": " << strings[i]);
    CHECK(clip.tokenizer.encode(strings[i], expected_ids[i].size()) == expected_ids[i]);
  }
  const auto io = alloy::safetensors_store::open(fixture / "io.safetensors");
  const ::torch::Tensor pixels = read_tensor(io, "pixels"), ids = read_tensor(io, "ids");
  ::torch::NoGradGuard no_grad;
  clip.model->eval();
  const ::torch::Tensor logits = clip.model->forward(pixels, ids);
  const ::torch::Tensor expected = read_tensor(io, "logits_per_image");
  CHECK((logits - expected).abs().max().item<float>() < 1e-4f);
  namespace F = ::torch::nn::functional;  // transformers returns the embeddings normalised
  const ::torch::Tensor image_embeds = F::normalize(clip.model->image_features(pixels), F::NormalizeFuncOptions().dim(-1));
  const ::torch::Tensor text_embeds = F::normalize(clip.model->text_features(ids), F::NormalizeFuncOptions().dim(-1));
  CHECK((text_embeds - read_tensor(io, "text_embeds")).abs().max().item<float>() < 1e-4f);
  CHECK((image_embeds - read_tensor(io, "image_embeds")).abs().max().item<float>() < 1e-4f);
}
