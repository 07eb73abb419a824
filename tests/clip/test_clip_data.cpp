// The CLIP example's data and zero-shot pipeline: seeded splits, image transforms, variants, class
// embeddings, zero-shot accuracy and the embedding cache. Synthetic data; the real datasets run
// in CTest's data tests.

#include <torch/torch.h>

#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "../../examples/clip_continual/clip/pretrain.hpp"
#include "../../examples/clip_continual/clip/zero_shot.hpp"
#include "test_folder.hpp"

using namespace alloy_clip;

namespace {

// n images of 4x4 pixels, image i filled with the value i % 256, labels i % classes.
image_dataset counting_dataset(std::int64_t n, std::int64_t classes) {
  image_dataset data;
  data.name = "counting";
  data.images = (::torch::arange(n) % 256).to(::torch::kUInt8).view({n, 1, 1, 1}).expand({n, 1, 4, 4}).contiguous();
  data.labels = ::torch::arange(n) % classes;
  for (std::int64_t c = 0; c < classes; ++c) data.classes.push_back("class " + std::to_string(c));
  data.templates = {"a photo of a {}.", "a picture of a {}."};
  return data;
}

std::set<std::int64_t> values_of(const image_dataset& d) {
  std::set<std::int64_t> out;
  for (std::int64_t i = 0; i < d.size(); ++i) out.insert(d.images[i][0][0][0].item<std::int64_t>());
  return out;
}

clip_config small_test_config(std::int64_t vocab) {
  clip_config c = pretrain_options::small_config();
  c.text.vocab_size = vocab;
  c.text.hidden_size = c.vision.hidden_size = 32;
  c.text.intermediate_size = c.vision.intermediate_size = 64;
  c.text.num_hidden_layers = c.vision.num_hidden_layers = 1;
  c.text.num_attention_heads = c.vision.num_attention_heads = 2;
  c.projection_dim = 16;
  c.text.eos_token_id = vocab - 1;
  c.text.bos_token_id = vocab - 2;
  c.text.pad_token_id = vocab - 1;
  return c;
}

}  // namespace

TEST_CASE("seeded permutations are permutations, fixed by the seed", "[clip][data]") {
  const auto a = seeded_permutation(1000, 7);
  CHECK(std::set<std::int64_t>(a.begin(), a.end()).size() == 1000);
  CHECK(*std::min_element(a.begin(), a.end()) == 0);
  CHECK(seeded_permutation(1000, 7) == a);
  CHECK(seeded_permutation(1000, 8) != a);
  // Computed in Python from splitmix64 and Fisher-Yates: the same on every platform and library.
  CHECK(seeded_permutation(10, 0) == std::vector<std::int64_t>{6, 3, 2, 9, 8, 1, 4, 7, 0, 5});
}

TEST_CASE("splits are disjoint, stratified and determined by the seed", "[clip][data]") {
  const image_dataset data = counting_dataset(200, 4);  // 50 per class, values 0..199 all distinct
  split_options options;
  options.test_fraction = 0.2;
  options.pretrain_fraction = 0.3;
  const dataset_splits parts = split_dataset(data, options);
  CHECK(parts.test.size() == 40);
  CHECK(parts.pretrain.size() == 60);
  CHECK(parts.train.size() == 100);
  CHECK(parts.train.name == "counting/train");
  for (std::int64_t c = 0; c < 4; ++c) {
    CHECK(parts.test.labels.eq(c).sum().item<std::int64_t>() == 10);
    CHECK(parts.pretrain.labels.eq(c).sum().item<std::int64_t>() == 15);
  }
  auto all = values_of(parts.test);
  const auto pre = values_of(parts.pretrain), train = values_of(parts.train);
  all.insert(pre.begin(), pre.end());
  all.insert(train.begin(), train.end());
  CHECK(all.size() == 200);  // no image in two parts, none lost
  // Labels travel with their images.
  for (std::int64_t i = 0; i < parts.train.size(); ++i) {
    CHECK(parts.train.images[i][0][0][0].item<std::int64_t>() % 4 == parts.train.labels[i].item<std::int64_t>());
  }
  CHECK(values_of(split_dataset(data, options).test) == values_of(parts.test));
  options.pretrain_fraction = 0.1;  // the test images do not depend on the pretraining share
  CHECK(values_of(split_dataset(data, options).test) == values_of(parts.test));
  options.seed = 3;
  CHECK(values_of(split_dataset(data, options).test) != values_of(parts.test));
  options.max_train = 7;
  CHECK(split_dataset(data, options).train.size() == 7);
  options.test_fraction = 0.9;
  CHECK_THROWS_WITH(split_dataset(data, options), Catch::Contains("leave images for training"));
}

TEST_CASE("the image transform resizes, replicates grey and normalises", "[clip][data]") {
  const ::torch::Tensor grey = ::torch::full({2, 1, 8, 8}, 51, ::torch::kUInt8);  // 0.2
  image_transform transform{28, 3, {{0.1}, {0.5}}};
  const ::torch::Tensor x = transform(grey, ::torch::kCPU);
  REQUIRE(x.sizes() == std::vector<std::int64_t>{2, 3, 28, 28});
  CHECK(x.min().item<float>() == Approx(0.2).margin(1e-6));  // (0.2 - 0.1) / 0.5
  CHECK(x.max().item<float>() == Approx(0.2).margin(1e-6));
  transform.norm = {{0.0, 0.5, 1.0}, {1.0, 1.0, 2.0}};
  const ::torch::Tensor y = transform(grey, ::torch::kCPU);
  CHECK(y[0][1][0][0].item<float>() == Approx(-0.3).margin(1e-6));
  CHECK(y[0][2][0][0].item<float>() == Approx(-0.4).margin(1e-6));
  const normalization stats = normalization::of(::torch::tensor({0, 255}, ::torch::kUInt8).view({2, 1, 1, 1}));
  CHECK(stats.mean == std::vector<double>{0.5});
  CHECK(stats.std[0] == Approx(0.5));
  const ::torch::Tensor rgb = ::torch::zeros({1, 3, 4, 4}, ::torch::kUInt8);
  CHECK_THROWS_WITH((image_transform{4, 1, {}})(rgb, ::torch::kCPU), Catch::Contains("3 channels; the model takes 1"));
}

TEST_CASE("a model's preprocessor_config.json gives its normalisation", "[clip][data]") {
  alloy::testing::test_folder folder;
  CHECK_FALSE(normalization::of_model(folder.path()).has_value());
  std::ofstream(folder / "preprocessor_config.json") << R"({"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]})";
  const auto n = normalization::of_model(folder.path());
  REQUIRE(n.has_value());
  CHECK(n->mean.size() == 3);
  CHECK(n->std[2] == Approx(0.27577711));
  std::ofstream(folder / "preprocessor_config.json") << R"({"image_mean": [0.5], "image_std": [0.5, 0.5]})";
  CHECK_THROWS_WITH(normalization::of_model(folder.path()), Catch::Contains("differ in length"));
}

TEST_CASE("variants invert or rotate the images and say so in their prompts", "[clip][data]") {
  image_dataset data = counting_dataset(3, 3);
  data.images = ::torch::arange(3 * 16).to(::torch::kUInt8).view({3, 1, 4, 4});
  const image_dataset inverted = variant_of(data, "inverted");
  CHECK(inverted.name == "counting-inverted");
  CHECK(inverted.images[1][0][2][3].item<int>() == 255 - data.images[1][0][2][3].item<int>());
  CHECK(inverted.prompt(0, 2) == "a photo of a class 2, in inverted colours.");
  const image_dataset rotated = variant_of(data, "rotated");
  // rot90 over (H, W): out[i][j] = in[j][W - 1 - i]
  CHECK(rotated.images[0][0][0][0].item<int>() == data.images[0][0][0][3].item<int>());
  CHECK(rotated.images[0][0][1][2].item<int>() == data.images[0][0][2][2].item<int>());
  CHECK(rotated.prompt(1, 0) == "a picture of a class 0, turned sideways.");
  CHECK_THROWS_WITH(variant_of(data, "sparkly"), Catch::Contains("unknown dataset variant") && Catch::Contains("tilted"));
  CHECK_THROWS_WITH(load_dataset("mnist-sparkly", "/nonexistent"), Catch::Contains("unknown dataset variant"));
  CHECK_THROWS_WITH(load_dataset("cifar", "."), Catch::Contains("unknown dataset") && Catch::Contains("fashion_mnist"));
  CHECK_THROWS_WITH(load_dataset("mnist", "/nonexistent"), Catch::Contains("no mnist dataset at"));
}

namespace {

// One image of size x size, 0 but for `value` at (row, column).
image_dataset one_pixel(std::int64_t size, std::int64_t row, std::int64_t column, int value) {
  image_dataset data = counting_dataset(1, 1);
  data.images = ::torch::zeros({1, 1, size, size}, ::torch::kUInt8);
  data.images[0][0][row][column] = value;
  return data;
}

int pixel(const image_dataset& d, std::int64_t row, std::int64_t column) { return d.images[0][0][row][column].item<int>(); }
std::int64_t total(const image_dataset& d) { return d.images.to(::torch::kInt64).sum().item<std::int64_t>(); }

}  // namespace

TEST_CASE("distortions keep the prompts and move pixels as computed by hand", "[clip][data]") {
  const image_dataset data = one_pixel(7, 2, 1, 90);
  const image_dataset flipped = variant_of(data, "flipped");
  CHECK(flipped.name == "counting-flipped");
  CHECK(flipped.templates == data.templates);  // what the image shows is unchanged, and so is the prompt
  CHECK(pixel(flipped, 2, 5) == 90);
  CHECK(total(flipped) == 90);

  const image_dataset bold = variant_of(data, "bold");  // the 3x3 maximum: a 3x3 block
  for (std::int64_t r = 0; r < 7; ++r) {
    for (std::int64_t c = 0; c < 7; ++c) CHECK(pixel(bold, r, c) == (r >= 1 && r <= 3 && c <= 2 ? 90 : 0));
  }
  const image_dataset blurred = variant_of(data, "blurred");  // the 3x3 mean, edges averaged over what is inside
  CHECK(pixel(blurred, 2, 2) == 10);                             // 90 / 9
  CHECK(pixel(blurred, 2, 0) == 15);                             // 90 / 6 at the left edge
  CHECK(pixel(blurred, 2, 3) == 0);
  const image_dataset shifted = variant_of(data, "shifted");  // 7 / 7 = 1 pixel right and down
  CHECK(pixel(shifted, 3, 2) == 90);
  CHECK(total(shifted) == 90);
  CHECK(total(variant_of(one_pixel(7, 6, 6, 90), "shifted")) == 0);  // pushed out of the frame

  const image_dataset centre = one_pixel(7, 3, 3, 200);
  const image_dataset tilted = variant_of(centre, "tilted");  // the centre of an odd-sized image stays
  CHECK(pixel(tilted, 3, 3) == 200);
  image_dataset bar = one_pixel(7, 3, 3, 200);  // a horizontal bar through the centre leaves its row
  bar.images[0][0][3] = 200;
  CHECK(variant_of(bar, "tilted").images[0][0][3].to(::torch::kInt64).sum().item<std::int64_t>() < 7 * 200 / 2);

  image_dataset white = counting_dataset(1, 1);
  white.images = ::torch::full({1, 1, 9, 9}, 255, ::torch::kUInt8);
  const image_dataset small = variant_of(white, "small");  // 6x6 at rows and columns 1..6
  CHECK(pixel(small, 0, 0) == 0);
  CHECK(pixel(small, 1, 1) == 255);
  CHECK(pixel(small, 6, 6) == 255);
  CHECK(pixel(small, 7, 7) == 0);
  CHECK(total(small) == 36 * 255);

  image_dataset grey = counting_dataset(64, 2);
  grey.images = ::torch::full({64, 1, 8, 8}, 128, ::torch::kUInt8);
  const image_dataset noisy = variant_of(grey, "noisy");
  CHECK(::torch::equal(noisy.images, variant_of(grey, "noisy").images));  // seeded: the same every time
  const double spread = (noisy.images.to(::torch::kFloat64) - 128).abs().mean().item<double>();
  CHECK(spread == Approx(48 * std::sqrt(2 / 3.14159265358979)).epsilon(0.05));  // E|N(0, 48)|

  const image_dataset chained = variant_of(variant_of(data, "flipped"), "bold");
  CHECK(chained.name == "counting-flipped-bold");
  CHECK(pixel(chained, 1, 6) == 90);
  CHECK(total(chained) == 9 * 90);
  CHECK_THROWS_WITH(load_dataset("mnist-flipped-bold", "/nonexistent"), Catch::Contains("no mnist dataset at"));
}

TEST_CASE("class embeddings are the renormalised mean over templates", "[clip][zero-shot]") {
  const bpe_vocabulary vocabulary = bpe_vocabulary::train({"a photo of a class 0.", "a picture of a class 1."});
  const clip_tokenizer tokenizer = vocabulary.tokenizer();
  ::torch::manual_seed(3);
  clip_model model(small_test_config(static_cast<std::int64_t>(vocabulary.symbols.size())));
  const image_dataset data = counting_dataset(12, 3);
  const ::torch::Tensor classes = class_embeddings(model, tokenizer, data, ::torch::kCPU);
  REQUIRE(classes.sizes() == std::vector<std::int64_t>{3, 16});
  CHECK(classes.norm(2, 1).sub(1).abs().max().item<float>() < 1e-5f);
  ::torch::NoGradGuard no_grad;
  model->eval();
  const ::torch::Tensor ids = tokenize(tokenizer, {data.prompt(0, 1), data.prompt(1, 1)}, model->config.text.max_position_embeddings);
  const ::torch::Tensor each = ::torch::nn::functional::normalize(model->text_features(ids), ::torch::nn::functional::NormalizeFuncOptions().dim(-1));
  const ::torch::Tensor mean = each.mean(0);
  CHECK(::torch::allclose(classes[1], mean / mean.norm(), 1e-5, 1e-6));
}

TEST_CASE("zero-shot accuracy counts the nearest class, and the cache follows the towers", "[clip][zero-shot]") {
  const bpe_vocabulary vocabulary = bpe_vocabulary::train({"a photo of a class 0."});
  const clip_tokenizer tokenizer = vocabulary.tokenizer();
  ::torch::manual_seed(4);
  clip_model model(small_test_config(static_cast<std::int64_t>(vocabulary.symbols.size())));
  const image_dataset data = counting_dataset(40, 4);
  const image_transform transform{28, 3, {{0.5}, {0.25}}};
  embedding_cache cache;
  const zero_shot_result first = zero_shot(model, tokenizer, data, transform, ::torch::kCPU, &cache, 16);
  CHECK(first.total == 40);
  CHECK(cache.misses() == 2);
  // The same by hand.
  const ::torch::Tensor scores = ::torch::matmul(image_embeddings(model, data, transform, ::torch::kCPU, 7),
                                                 class_embeddings(model, tokenizer, data, ::torch::kCPU).t());
  CHECK(first.predictions.equal(scores.argmax(1)));
  CHECK(first.correct == scores.argmax(1).eq(data.labels).sum().item<std::int64_t>());
  CHECK(first.accuracy == Approx(static_cast<double>(first.correct) / 40.0));

  zero_shot(model, tokenizer, data, transform, ::torch::kCPU, &cache, 16);
  CHECK(cache.hits() == 2);  // nothing changed: both served from the cache
  {
    ::torch::NoGradGuard no_grad;
    model->visual_projection->weight.mul_(-1.0);  // an in-place update of the vision tower only
  }
  const zero_shot_result flipped = zero_shot(model, tokenizer, data, transform, ::torch::kCPU, &cache, 16);
  CHECK(cache.hits() == 3);  // the class embeddings
  CHECK(cache.misses() == 3);  // the image embeddings, recomputed
  CHECK(flipped.predictions.equal(scores.neg().argmax(1)));
  CHECK(model->is_training());  // evaluation restored the training mode
}

TEST_CASE("devices are parsed and CUDA without a GPU is refused", "[clip][device]") {
  CHECK(parse_device("cpu").is_cpu());
  CHECK_THROWS_WITH(parse_device("tpu"), Catch::Contains("unknown device"));
  if (!::torch::cuda::is_available()) {
    CHECK_THROWS_WITH(parse_device("cuda"), Catch::Contains("sees no CUDA device"));
  }
  {
    autocast_scope scope(::torch::kCPU);  // nothing to do on CPU
    const ::torch::Tensor product = ::torch::matmul(::torch::ones({2, 2}), ::torch::ones({2, 2}));
    CHECK(product.scalar_type() == ::torch::kFloat32);
  }
}
