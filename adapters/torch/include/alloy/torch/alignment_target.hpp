#pragma once
// What a task's weights align to, placed on the model's device once per task: G (in f32, the
// compute dtype), the top-p masks of G by magnitude (alloy's exact selection, ties broken by
// position, computed on the host from G) as bit words where the device reads them, and
// optionally the initial weights G0 (for cosine alignment). The PAM aligner and the
// differentiable regularizers of this adapter read it.

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/align/regularizers.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/select.hpp"
#include "alloy/store/name_index.hpp"
#include "alloy/store/parameter_store.hpp"
#include "alloy/torch/tensor_store.hpp"
#include "alloy/torch/transfer.hpp"

namespace alloy::torch_adapter {

// A bit mask as a bool tensor of the given sizes on the given device.
inline ::torch::Tensor to_bool_tensor(const bit_mask& mask, at::IntArrayRef sizes,
                                      ::torch::Device device = ::torch::kCPU) {
  // Eight bits at a time: a table holds, for each byte value, the eight 0/1 bytes it expands to.
  static const auto expand = [] {
    std::array<std::uint64_t, 256> table{};
    for (std::uint64_t byte = 0; byte < 256; ++byte) {
      for (std::uint64_t bit = 0; bit < 8; ++bit) table[byte] |= ((byte >> bit) & 1u) << (8 * bit);
    }
    return table;
  }();
  ::torch::Tensor out = ::torch::empty({static_cast<std::int64_t>(mask.size())}, ::torch::kBool);
  auto* data = reinterpret_cast<std::uint8_t*>(out.data_ptr<bool>());
  const std::size_t whole = mask.size() / 8;
  for (std::size_t i = 0; i < whole; ++i) {
    const auto byte = static_cast<std::uint8_t>(mask.word(i / 8) >> (8 * (i % 8)));
    std::memcpy(data + 8 * i, &expand[byte], 8);
  }
  for (std::size_t i = 8 * whole; i < mask.size(); ++i) data[i] = mask.test(i) ? 1 : 0;
  return out.view(sizes).to(device);
}

// A device with its index (torch::kCUDA names no device; its tensors say cuda:0), so that it
// compares equal to the device of the tensors placed on it.
inline ::torch::Device resolved_device(::torch::Device device) {
  if (device.is_cpu() || device.has_index()) return device;
  return ::torch::empty({0}, ::torch::TensorOptions().device(device)).device();
}

class alignment_target {
 public:
  // G's floating tensors with their top-p masks (p = 0: empty masks, for L2 and cosine only),
  // selected on the host by `backend`.
  template <parameter_store Global>
  alignment_target(const Global& global, double p, ::torch::Device device, const cpu_backend& backend = {})
      : alignment_target(global, top_magnitude_masks(backend, global, p), device) {}

  // The same from masks already computed (pam_aligner::top_masks of the core aligner).
  template <parameter_store Global>
  alignment_target(const Global& global, tensor_masks masks, ::torch::Device device)
      : masks_(std::move(masks)), device_(resolved_device(device)) {
    for (const auto& entry : masks_) {
      const std::string& name = entry.first;
      const const_tensor_view g = global.view(name);
      if (entry.second.size() != g.numel()) {
        alloy::fail(error_code::shape_mismatch, "alignment target: the mask of ", alloy::quoted{name},
                            " has ", entry.second.size(), " entries but the tensor has ", g.numel());
      }
      index_.add(name, "an alignment target");
      global_.push_back(from_view(g).to(device_, ::torch::kFloat32, /*non_blocking=*/false, /*copy=*/true));
      if (!device_.is_cpu()) {
        // The mask's 64-bit words as an int64 tensor on the device, for alloy's device kernels.
        const auto words = static_cast<std::int64_t>((entry.second.size() + 63) / 64);
        ::torch::Tensor host = ::torch::empty({words}, ::torch::kInt64);
        if (words > 0) std::memcpy(host.data_ptr<std::int64_t>(), entry.second.words(), static_cast<std::size_t>(words) * 8);
        device_words_.push_back(host.to(device_));
      }
    }
  }

  // Adds the initial weights G0 (before the first task), for cosine alignment.
  template <parameter_store Initial>
  alignment_target& set_initial(const Initial& initial) {
    std::vector<::torch::Tensor> tensors;
    for (std::size_t i = 0; i < names().size(); ++i) {
      const const_tensor_view g0 = initial.view(names()[i]);
      if (!(shape_of(global_[i]) == g0.shape())) {
        alloy::fail(error_code::shape_mismatch, "alignment target: tensor ", alloy::quoted{names()[i]},
                            " has shape ", g0.shape(), " in G0 but ", shape_of(global_[i]), " in G");
      }
      tensors.push_back(from_view(g0).to(device_, ::torch::kFloat32, false, true));
    }
    initial_ = std::move(tensors);
    return *this;
  }

  [[nodiscard]] const std::vector<std::string>& names() const noexcept { return index_.names(); }
  [[nodiscard]] ::torch::Device device() const noexcept { return device_; }
  [[nodiscard]] bool has_initial() const noexcept { return initial_.has_value(); }
  // The top-p masks, in host memory.
  [[nodiscard]] const tensor_masks& masks() const noexcept { return masks_; }

  // G's tensor in f32 on the target's device.
  [[nodiscard]] const ::torch::Tensor& global(std::string_view name) const { return global_[position(name)]; }
  // The words of the tensor's top-p mask where the target's device reads them.
  [[nodiscard]] const std::uint64_t* mask_words(std::string_view name) const {
    const std::size_t at = position(name);
    if (device_.is_cpu()) return masks_.find(name)->second.words();
    return reinterpret_cast<const std::uint64_t*>(device_words_[at].data_ptr<std::int64_t>());
  }
  [[nodiscard]] const ::torch::Tensor& initial(std::string_view name) const {
    if (!initial_) alloy::fail(error_code::invalid_argument, "alignment target: G0 was not set (set_initial)");
    return (*initial_)[position(name)];
  }

  // G's tensors as a store (zero-copy views of the f32 copies, in the target's device memory).
  [[nodiscard]] tensor_store global_store() const {
    std::vector<std::pair<std::string, ::torch::Tensor>> tensors;
    for (std::size_t i = 0; i < names().size(); ++i) tensors.emplace_back(names()[i], global_[i]);
    return tensor_store(std::move(tensors));
  }

 private:
  [[nodiscard]] std::size_t position(std::string_view name) const {
    const auto found = index_.find(name);
    if (!found) alloy::detail::fail_missing_tensor(name, "the alignment target");
    return *found;
  }

  tensor_masks masks_;
  ::torch::Device device_;
  alloy::detail::name_index index_;
  std::vector<::torch::Tensor> global_, device_words_;
  std::optional<std::vector<::torch::Tensor>> initial_;
};

}  // namespace alloy::torch_adapter
