#pragma once
// CLIP (Radford et al., 2021) in LibTorch, with the parameter names, shapes and layout of Hugging
// Face's CLIPModel, so that a `model.safetensors` written by transformers loads unchanged and a
// model saved here loads in transformers:
//
//   text_model.embeddings.{token_embedding,position_embedding}.weight
//   text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj,layer_norm1,mlp.fc1,mlp.fc2,layer_norm2}.*
//   text_model.final_layer_norm.*
//   vision_model.embeddings.{class_embedding,patch_embedding.weight,position_embedding.weight}
//   vision_model.pre_layrnorm.*   (sic: transformers' name)
//   vision_model.encoder.layers.N.*   vision_model.post_layernorm.*
//   visual_projection.weight   text_projection.weight   logit_scale
//
// As the original: pre-layernorm transformer blocks, quick_gelu (x sigmoid(1.702 x)) or gelu, a
// causal mask in the text tower, text pooled at the end-of-text token, images at the class token
// after post_layernorm, projections without bias, logits = exp(logit_scale) cos(image, text).

#include <torch/torch.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>
#include <limits>
#include <string>

#include "config.hpp"
#include "lora.hpp"

namespace alloy_clip {

inline ::torch::Tensor activate(const ::torch::Tensor& x, const std::string& name) {
  if (name == "quick_gelu") return x * ::torch::sigmoid(1.702 * x);
  return ::torch::gelu(x);  // exact (erf) gelu, transformers' "gelu"
}

struct attention_impl : ::torch::nn::Module {
  attention_impl(std::int64_t width, std::int64_t head_count)
      : heads(head_count),
        q_proj(register_module("q_proj", lora_linear(width, width))),
        k_proj(register_module("k_proj", lora_linear(width, width))),
        v_proj(register_module("v_proj", lora_linear(width, width))),
        out_proj(register_module("out_proj", lora_linear(width, width))) {}

  // x: [batch, tokens, width]; mask: additive, broadcastable to [batch, heads, tokens, tokens], or undefined.
  ::torch::Tensor forward(const ::torch::Tensor& x, const ::torch::Tensor& mask) {
    const auto batch = x.size(0), tokens = x.size(1), width = x.size(2);
    const auto head_dim = width / heads;
    const auto split = [&](const ::torch::Tensor& t) { return t.view({batch, tokens, heads, head_dim}).transpose(1, 2); };
    const ::torch::Tensor q = split(q_proj(x)), k = split(k_proj(x)), v = split(v_proj(x));
    ::torch::Tensor scores = ::torch::matmul(q, k.transpose(-1, -2)) * (1.0 / std::sqrt(static_cast<double>(head_dim)));
    if (mask.defined()) scores = scores + mask;
    const ::torch::Tensor weights = ::torch::softmax(scores, -1, ::torch::kFloat32).to(q.scalar_type());
    return out_proj(::torch::matmul(weights, v).transpose(1, 2).reshape({batch, tokens, width}));
  }

  std::int64_t heads;
  lora_linear q_proj, k_proj, v_proj, out_proj;
};
TORCH_MODULE_IMPL(attention, attention_impl);

struct mlp_impl : ::torch::nn::Module {
  mlp_impl(std::int64_t width, std::int64_t hidden, std::string act)
      : activation(std::move(act)),
        fc1(register_module("fc1", lora_linear(width, hidden))),
        fc2(register_module("fc2", lora_linear(hidden, width))) {}
  ::torch::Tensor forward(const ::torch::Tensor& x) { return fc2(activate(fc1(x), activation)); }

  std::string activation;
  lora_linear fc1, fc2;
};
TORCH_MODULE_IMPL(mlp, mlp_impl);

inline ::torch::nn::LayerNorm layer_norm(std::int64_t width, double eps) {
  return ::torch::nn::LayerNorm(::torch::nn::LayerNormOptions({width}).eps(eps));
}

struct encoder_layer_impl : ::torch::nn::Module {
  explicit encoder_layer_impl(const tower_config& c)
      : self_attn(register_module("self_attn", attention(c.hidden_size, c.num_attention_heads))),
        layer_norm1(register_module("layer_norm1", layer_norm(c.hidden_size, c.layer_norm_eps))),
        mlp_block(register_module("mlp", mlp(c.hidden_size, c.intermediate_size, c.hidden_act))),
        layer_norm2(register_module("layer_norm2", layer_norm(c.hidden_size, c.layer_norm_eps))) {}

  ::torch::Tensor forward(::torch::Tensor x, const ::torch::Tensor& mask) {
    x = x + self_attn(layer_norm1(x), mask);
    return x + mlp_block(layer_norm2(x));
  }

  attention self_attn;
  ::torch::nn::LayerNorm layer_norm1;
  mlp mlp_block;
  ::torch::nn::LayerNorm layer_norm2;
};
TORCH_MODULE_IMPL(encoder_layer, encoder_layer_impl);

struct encoder_impl : ::torch::nn::Module {
  explicit encoder_impl(const tower_config& c) : layers(register_module("layers", ::torch::nn::ModuleList())) {
    for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(encoder_layer(c));
  }
  ::torch::Tensor forward(::torch::Tensor x, const ::torch::Tensor& mask) {
    for (const auto& layer : *layers) x = layer->as<encoder_layer>()->forward(x, mask);
    return x;
  }
  ::torch::nn::ModuleList layers;
};
TORCH_MODULE_IMPL(encoder, encoder_impl);

struct text_embeddings_impl : ::torch::nn::Module {
  explicit text_embeddings_impl(const text_config& c)
      : token_embedding(register_module("token_embedding", ::torch::nn::Embedding(c.vocab_size, c.hidden_size))),
        position_embedding(
            register_module("position_embedding", ::torch::nn::Embedding(c.max_position_embeddings, c.hidden_size))) {}
  ::torch::Tensor forward(const ::torch::Tensor& ids) {
    const ::torch::Tensor positions = ::torch::arange(ids.size(1), ids.options().dtype(::torch::kInt64));
    return token_embedding(ids) + position_embedding(positions);
  }
  ::torch::nn::Embedding token_embedding, position_embedding;
};
TORCH_MODULE_IMPL(text_embeddings, text_embeddings_impl);

struct text_transformer_impl : ::torch::nn::Module {
  explicit text_transformer_impl(const text_config& c)
      : config(c),
        embeddings(register_module("embeddings", text_embeddings(c))),
        encoder_stack(register_module("encoder", encoder(c))),
        final_layer_norm(register_module("final_layer_norm", layer_norm(c.hidden_size, c.layer_norm_eps))) {}

  // ids: [batch, tokens] (int64). Returns the pooled states [batch, width].
  ::torch::Tensor forward(const ::torch::Tensor& ids) {
    if (ids.size(1) > config.max_position_embeddings) {
      alloy::fail(alloy::error_code::invalid_argument, "text of ", ids.size(1), " tokens exceeds the model's ",
                          config.max_position_embeddings, " positions");
    }
    ::torch::Tensor x = embeddings(ids);
    const auto tokens = ids.size(1);
    const ::torch::Tensor causal =
        ::torch::full({tokens, tokens}, -std::numeric_limits<float>::infinity(), x.options()).triu(1);
    x = final_layer_norm(encoder_stack(x, causal));
    // Pool at the end-of-text token: the first position holding eos_token_id, or, for configs
    // from before transformers fixed eos_token_id (it was 2), the largest id (as transformers does).
    const ::torch::Tensor where = config.eos_token_id == 2 ? ids.argmax(-1) : ids.eq(config.eos_token_id).to(::torch::kInt32).argmax(-1);
    return x.index({::torch::arange(x.size(0), where.options().dtype(::torch::kInt64)), where.to(::torch::kInt64)});
  }

  text_config config;
  text_embeddings embeddings;
  encoder encoder_stack;
  ::torch::nn::LayerNorm final_layer_norm;
};
TORCH_MODULE_IMPL(text_transformer, text_transformer_impl);

struct vision_embeddings_impl : ::torch::nn::Module {
  explicit vision_embeddings_impl(const vision_config& c)
      : config(c),
        class_embedding(register_parameter("class_embedding", ::torch::randn({c.hidden_size}))),
        patch_embedding(register_module(
            "patch_embedding", ::torch::nn::Conv2d(::torch::nn::Conv2dOptions(c.num_channels, c.hidden_size, c.patch_size)
                                                       .stride(c.patch_size)
                                                       .bias(false)))),
        position_embedding(register_module("position_embedding", ::torch::nn::Embedding(c.positions(), c.hidden_size))) {}

  // pixels: [batch, channels, size, size] -> [batch, 1 + patches, width]
  ::torch::Tensor forward(const ::torch::Tensor& pixels) {
    if (pixels.dim() != 4 || pixels.size(1) != config.num_channels || pixels.size(2) != config.image_size ||
        pixels.size(3) != config.image_size) {
      alloy::fail(alloy::error_code::shape_mismatch, "images must be [batch, ", config.num_channels, ", ",
                          config.image_size, ", ", config.image_size, "], not ", pixels.sizes());
    }
    const ::torch::Tensor patches = patch_embedding(pixels.to(patch_embedding->weight.scalar_type())).flatten(2).transpose(1, 2);
    const ::torch::Tensor cls = class_embedding.expand({pixels.size(0), 1, -1});
    return ::torch::cat({cls, patches}, 1) + position_embedding->weight;
  }

  vision_config config;
  ::torch::Tensor class_embedding;
  ::torch::nn::Conv2d patch_embedding;
  ::torch::nn::Embedding position_embedding;
};
TORCH_MODULE_IMPL(vision_embeddings, vision_embeddings_impl);

struct vision_transformer_impl : ::torch::nn::Module {
  explicit vision_transformer_impl(const vision_config& c)
      : embeddings(register_module("embeddings", vision_embeddings(c))),
        pre_layrnorm(register_module("pre_layrnorm", layer_norm(c.hidden_size, c.layer_norm_eps))),
        encoder_stack(register_module("encoder", encoder(c))),
        post_layernorm(register_module("post_layernorm", layer_norm(c.hidden_size, c.layer_norm_eps))) {}

  // Returns the pooled (class token) states [batch, width].
  ::torch::Tensor forward(const ::torch::Tensor& pixels) {
    const ::torch::Tensor x = encoder_stack(pre_layrnorm(embeddings(pixels)), ::torch::Tensor());
    return post_layernorm(x.select(1, 0));
  }

  vision_embeddings embeddings;
  ::torch::nn::LayerNorm pre_layrnorm;
  encoder encoder_stack;
  ::torch::nn::LayerNorm post_layernorm;
};
TORCH_MODULE_IMPL(vision_transformer, vision_transformer_impl);

struct clip_model_impl : ::torch::nn::Module {
  explicit clip_model_impl(const clip_config& c)
      : config(validated(c)),
        text_model(register_module("text_model", text_transformer(c.text))),
        vision_model(register_module("vision_model", vision_transformer(c.vision))),
        visual_projection(register_module(
            "visual_projection", ::torch::nn::Linear(::torch::nn::LinearOptions(c.vision.hidden_size, c.projection_dim).bias(false)))),
        text_projection(register_module(
            "text_projection", ::torch::nn::Linear(::torch::nn::LinearOptions(c.text.hidden_size, c.projection_dim).bias(false)))),
        logit_scale(register_parameter("logit_scale", ::torch::tensor(static_cast<float>(c.logit_scale_init_value)))) {}

  // Puts LoRA on the linear layers whose name is one of `targets` (q_proj, k_proj, v_proj,
  // out_proj, fc1, fc2) in the chosen towers, and freezes every other weight of the model. Returns
  // how many layers were adapted.
  std::size_t add_lora(const lora_options& options, const std::vector<std::string>& targets = {"q_proj", "v_proj"},
                       bool text_tower = true, bool vision_tower = true) {
    std::size_t adapted = 0;
    for (const auto& item : named_modules("", /*include_self=*/false)) {
      const std::string& name = item.key();
      const bool in_tower = (text_tower && name.rfind("text_model.", 0) == 0) ||
                            (vision_tower && name.rfind("vision_model.", 0) == 0);
      const auto dot = name.rfind('.');
      const std::string leaf = dot == std::string::npos ? name : name.substr(dot + 1);
      if (!in_tower || std::find(targets.begin(), targets.end(), leaf) == targets.end()) continue;
      auto layer = std::dynamic_pointer_cast<lora_linear_impl>(item.value());
      if (!layer) continue;
      layer->enable_lora(options);
      ++adapted;
    }
    if (adapted == 0) {
      alloy::fail(alloy::error_code::invalid_argument, "add_lora: no linear layer matches the targets");
    }
    for (auto& item : named_parameters()) {
      if (item.key().find(".lora_") == std::string::npos) item.value().set_requires_grad(false);
    }
    return adapted;
  }

  // The LoRA factors (or, without LoRA, every parameter) under their names: the weights to merge and align.
  [[nodiscard]] std::vector<std::pair<std::string, ::torch::Tensor>> trainable_parameters() const {
    std::vector<std::pair<std::string, ::torch::Tensor>> out;
    for (const auto& item : named_parameters()) {
      if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
    }
    return out;
  }

  ::torch::Tensor image_features(const ::torch::Tensor& pixels) { return visual_projection(vision_model(pixels)); }
  ::torch::Tensor text_features(const ::torch::Tensor& ids) { return text_projection(text_model(ids)); }

  // logits_per_image [images, texts] = exp(logit_scale) * cos(image, text).
  ::torch::Tensor forward(const ::torch::Tensor& pixels, const ::torch::Tensor& ids) {
    const ::torch::Tensor images = ::torch::nn::functional::normalize(
        image_features(pixels), ::torch::nn::functional::NormalizeFuncOptions().dim(-1));
    const ::torch::Tensor texts = ::torch::nn::functional::normalize(
        text_features(ids), ::torch::nn::functional::NormalizeFuncOptions().dim(-1));
    return logit_scale.exp() * ::torch::matmul(images, texts.t());
  }

  // (Checked before any layer is built from it.)
  static const clip_config& validated(const clip_config& c) {
    c.validate();
    return c;
  }

  clip_config config;
  text_transformer text_model;
  vision_transformer vision_model;
  ::torch::nn::Linear visual_projection, text_projection;
  ::torch::Tensor logit_scale;
};
TORCH_MODULE_IMPL(clip_model, clip_model_impl);

}  // namespace alloy_clip
