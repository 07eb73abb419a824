#pragma once
// Zero-shot classification with CLIP (Radford et al., 2021, section 3.1.4): each class is the mean
// of the normalised text embeddings of its prompts (one per template), renormalised; an image is
// classified by the largest cosine similarity to the class embeddings.
//
// embedding_cache keeps class and image embeddings between evaluations. An entry is tied to the
// tower that made it through a fingerprint of that tower's parameters (each tensor's storage and
// version counter, which every in-place update such as an optimizer step or alloy's assign
// increments), so evaluating an unchanged tower again costs nothing and a changed one is
// recomputed: with LoRA on the vision tower only, the class embeddings are computed once per run.

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../data/datasets.hpp"
#include "device.hpp"
#include "model.hpp"
#include "tokenizer.hpp"

namespace alloy_clip {

// The ids of `texts` as an int64 tensor [texts, context], truncated and padded as CLIPTokenizer
// does with padding="max_length".
inline ::torch::Tensor tokenize(const clip_tokenizer& tokenizer, const std::vector<std::string>& texts, std::int64_t context) {
  std::vector<std::int64_t> ids;
  ids.reserve(texts.size() * static_cast<std::size_t>(context));
  for (const auto& text : texts) {
    const auto row = tokenizer.encode(text, static_cast<std::size_t>(context));
    ids.insert(ids.end(), row.begin(), row.end());
  }
  return ::torch::tensor(ids, ::torch::kInt64).view({static_cast<std::int64_t>(texts.size()), context});
}

// Changes whenever one of `parameters` is updated in place or replaced.
inline std::uint64_t fingerprint(const std::vector<::torch::Tensor>& parameters) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  const auto mix = [&h](std::uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  };
  for (const auto& p : parameters) {
    mix(reinterpret_cast<std::uintptr_t>(p.data_ptr()));
    mix(static_cast<std::uint64_t>(p._version()));
    mix(static_cast<std::uint64_t>(p.numel()));
  }
  return h;
}

inline std::vector<::torch::Tensor> text_tower_parameters(clip_model& model) {
  auto out = model->text_model->parameters();
  for (auto& p : model->text_projection->parameters()) out.push_back(p);
  return out;
}

inline std::vector<::torch::Tensor> vision_tower_parameters(clip_model& model) {
  auto out = model->vision_model->parameters();
  for (auto& p : model->visual_projection->parameters()) out.push_back(p);
  return out;
}

// Evaluation mode and no gradients for a scope; the training mode is restored after.
class inference_scope {
 public:
  explicit inference_scope(clip_model& model) : model_(model), was_training_(model->is_training()) { model_->eval(); }
  ~inference_scope() { model_->train(was_training_); }
  inference_scope(const inference_scope&) = delete;
  inference_scope& operator=(const inference_scope&) = delete;

 private:
  clip_model& model_;
  bool was_training_;
  ::torch::NoGradGuard no_grad_;
};

// Normalised class embeddings [classes, projection_dim] of a dataset's classes and templates.
inline ::torch::Tensor class_embeddings(clip_model& model, const clip_tokenizer& tokenizer, const image_dataset& data,
                                        const ::torch::Device& device) {
  if (data.templates.empty()) alloy::fail(alloy::error_code::invalid_argument, "dataset ", data.name, " has no prompt templates");
  inference_scope scope(model);
  autocast_scope autocast(device);
  std::vector<std::string> prompts;
  for (std::size_t c = 0; c < data.classes.size(); ++c) {
    for (std::size_t t = 0; t < data.templates.size(); ++t) prompts.push_back(data.prompt(t, static_cast<std::int64_t>(c)));
  }
  const ::torch::Tensor ids = tokenize(tokenizer, prompts, model->config.text.max_position_embeddings).to(device);
  namespace F = ::torch::nn::functional;
  const auto unit = F::NormalizeFuncOptions().dim(-1);
  const ::torch::Tensor each = F::normalize(model->text_features(ids).to(::torch::kFloat32), unit);
  const auto classes = static_cast<std::int64_t>(data.classes.size());
  return F::normalize(each.view({classes, static_cast<std::int64_t>(data.templates.size()), -1}).mean(1), unit);
}

// Normalised image embeddings [n, projection_dim], computed in batches.
inline ::torch::Tensor image_embeddings(clip_model& model, const image_dataset& data, const image_transform& transform,
                                        const ::torch::Device& device, std::int64_t batch = 256) {
  inference_scope scope(model);
  autocast_scope autocast(device);
  std::vector<::torch::Tensor> parts;
  namespace F = ::torch::nn::functional;
  for (std::int64_t from = 0; from < data.size(); from += batch) {
    const auto to = std::min(data.size(), from + batch);
    const ::torch::Tensor pixels = transform(data.images.slice(0, from, to), device);
    parts.push_back(F::normalize(model->image_features(pixels).to(::torch::kFloat32), F::NormalizeFuncOptions().dim(-1)));
  }
  if (parts.empty()) return ::torch::empty({0, model->config.projection_dim}, ::torch::TensorOptions().device(device));
  return ::torch::cat(parts);
}

class embedding_cache {
 public:
  ::torch::Tensor classes(clip_model& model, const clip_tokenizer& tokenizer, const image_dataset& data, const ::torch::Device& device) {
    return lookup("classes:" + key(data), fingerprint(text_tower_parameters(model)),
                  [&] { return class_embeddings(model, tokenizer, data, device); });
  }

  ::torch::Tensor images(clip_model& model, const image_dataset& data, const image_transform& transform, const ::torch::Device& device,
                         std::int64_t batch = 256) {
    return lookup("images:" + key(data), fingerprint(vision_tower_parameters(model)),
                  [&] { return image_embeddings(model, data, transform, device, batch); });
  }

  [[nodiscard]] std::size_t hits() const { return hits_; }
  [[nodiscard]] std::size_t misses() const { return misses_; }
  void clear() { entries_.clear(); }

 private:
  static std::string key(const image_dataset& data) {
    return data.name + "@" + std::to_string(reinterpret_cast<std::uintptr_t>(data.images.data_ptr())) + "#" +
           std::to_string(data.size());
  }

  template <typename Compute>
  ::torch::Tensor lookup(const std::string& name, std::uint64_t tower, Compute&& compute) {
    auto it = entries_.find(name);
    if (it != entries_.end() && it->second.first == tower) {
      ++hits_;
      return it->second.second;
    }
    ++misses_;
    ::torch::Tensor value = compute();
    entries_[name] = {tower, value};
    return value;
  }

  std::map<std::string, std::pair<std::uint64_t, ::torch::Tensor>> entries_;
  std::size_t hits_ = 0, misses_ = 0;
};

struct zero_shot_result {
  double accuracy = 0;  // in [0, 1]
  std::int64_t correct = 0, total = 0;
  ::torch::Tensor predictions;  // int64 [n], CPU
};

// Accuracy of zero-shot classification of `data` among its own classes.
inline zero_shot_result zero_shot(clip_model& model, const clip_tokenizer& tokenizer, const image_dataset& data,
                                  const image_transform& transform, const ::torch::Device& device, embedding_cache* cache = nullptr,
                                  std::int64_t batch = 256) {
  embedding_cache local;
  embedding_cache& use = cache != nullptr ? *cache : local;
  const ::torch::Tensor classes = use.classes(model, tokenizer, data, device);
  const ::torch::Tensor images = use.images(model, data, transform, device, batch);
  zero_shot_result out;
  out.predictions = ::torch::matmul(images, classes.t()).argmax(1).cpu();
  out.total = data.size();
  out.correct = out.predictions.eq(data.labels).sum().item<std::int64_t>();
  out.accuracy = out.total == 0 ? 0.0 : static_cast<double>(out.correct) / static_cast<double>(out.total);
  return out;
}

}  // namespace alloy_clip
