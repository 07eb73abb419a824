#pragma once
// LoRA (Hu et al., 2021) for the CLIP model: a linear layer whose frozen weight W and bias keep
// transformers' names (`q_proj.weight`, `q_proj.bias`), so checkpoints load unchanged, plus, once
// enabled, a low-rank update in PEFT's names and layout (`q_proj.lora_A.weight` [r, in],
// `q_proj.lora_B.weight` [out, r]):
//
//   y = x W^T + b + (alpha / r) B A dropout(x)      A: Kaiming-uniform, B: zeros (so y starts at W)
//
// The LoRA factors are the weights alloy's continual merger keeps as G and PAM aligns.

#include <torch/torch.h>

#include <cmath>
#include <cstdint>

#include "alloy/core/error.hpp"

namespace alloy_clip {

struct lora_options {
  std::int64_t rank = 8;
  double alpha = 16.0;
  double dropout = 0.0;
};

struct lora_linear_impl : ::torch::nn::Module {
  lora_linear_impl(std::int64_t in_features, std::int64_t out_features, bool with_bias = true)
      : in(in_features), out(out_features) {
    weight = register_parameter("weight", ::torch::empty({out, in}));
    // torch.nn.Linear's initialisation, so that a fresh model matches one built with nn::Linear.
    ::torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
    if (with_bias) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      bias = register_parameter("bias", ::torch::empty({out}).uniform_(-bound, bound));
    }
  }

  // Adds the low-rank update and freezes W and b.
  void enable_lora(const lora_options& options) {
    if (lora_A) alloy::fail(alloy::error_code::invalid_argument, "LoRA is already enabled on this layer");
    if (options.rank <= 0 || options.rank > std::min(in, out)) {
      alloy::fail(alloy::error_code::invalid_argument, "LoRA rank ", options.rank, " must be in [1, ",
                          std::min(in, out), "] for a ", out, "x", in, " layer");
    }
    if (!(options.dropout >= 0.0 && options.dropout < 1.0)) {
      alloy::fail(alloy::error_code::invalid_argument, "LoRA dropout ", options.dropout, " must be in [0, 1)");
    }
    lora_A = register_module("lora_A", ::torch::nn::Linear(::torch::nn::LinearOptions(in, options.rank).bias(false)));
    lora_B = register_module("lora_B", ::torch::nn::Linear(::torch::nn::LinearOptions(options.rank, out).bias(false)));
    ::torch::nn::init::zeros_(lora_B->weight);
    scaling = options.alpha / static_cast<double>(options.rank);
    dropout = options.dropout;
    weight.set_requires_grad(false);
    if (bias.defined()) bias.set_requires_grad(false);
  }

  ::torch::Tensor forward(const ::torch::Tensor& x) {
    ::torch::Tensor y = ::torch::nn::functional::linear(x, weight, bias);
    if (!lora_A) return y;
    const ::torch::Tensor dropped =
        dropout > 0 ? ::torch::nn::functional::dropout(x, ::torch::nn::functional::DropoutFuncOptions().p(dropout).training(is_training())) : x;
    return y + scaling * lora_B(lora_A(dropped));
  }

  // W + (alpha / r) B A: the weight with the update folded in (W itself when LoRA is off).
  [[nodiscard]] ::torch::Tensor merged_weight() const {
    if (!lora_A) return weight.detach().clone();
    return weight.detach() + scaling * ::torch::matmul(lora_B->weight.detach(), lora_A->weight.detach());
  }

  std::int64_t in, out;
  ::torch::Tensor weight, bias;
  ::torch::nn::Linear lora_A{nullptr}, lora_B{nullptr};
  double scaling = 0.0;
  double dropout = 0.0;
};
TORCH_MODULE_IMPL(lora_linear, lora_linear_impl);

}  // namespace alloy_clip
