#pragma once
// A base store with a PEFT LoRA adapter folded in (peft_lora_adapter.hpp): adapted tensors are
// computed on first access by the store's backend (in f32, rounded once into the base's dtype)
// and kept until `release`, so a streaming merge holds one adapted tensor at a time. The backend
// is the store's because it computes lazily, inside find(); every other tensor is the base's view.

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "alloy/exec/cpu_backend.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"
#include "alloy/store/peft_lora_adapter.hpp"

namespace alloy {

// A base store with an adapter folded in. Views of adapted tensors stay valid until `release`
// of that name (or the store's destruction); reading is safe from several threads.
template <parameter_store Base, class Backend = cpu_backend>
class lora_applied_store : public named_store<lora_applied_store<Base, Backend>> {
 public:
  lora_applied_store(Base base, peft_lora_adapter adapter, Backend backend = {})
      : base_(std::move(base)), adapter_(std::move(adapter)), backend_(backend),
        cache_(std::make_unique<cache>()) {
    description_ = describe(base_) + "+" + adapter_.folder().string();
    adapter_.check_against(base_, description_);
    for (const auto& name : base_.names()) this->index_.add(std::string(name), description_);
  }

  [[nodiscard]] std::optional<const_tensor_view> find(std::string_view name) const {
    const auto original = base_.find(name);
    if (!original || adapter_.find(name) == nullptr) return original;
    const std::lock_guard lock(cache_->mutex);
    if (const auto kept = cache_->tensors.find(name); kept != cache_->tensors.end()) return kept->second.view(name);
    memory_store adapted;
    adapter_.apply(backend_, name, *original, adapted.insert(std::string(name), original->dtype(), original->shape()));
    return cache_->tensors.emplace(std::string(name), std::move(adapted)).first->second.view(name);
  }

  // Starts reading the base's pages of `name` in the background.
  void prefetch(std::string_view name) const {
    if constexpr (requires { base_.prefetch(name); }) base_.prefetch(name);
  }

  // Frees the adapted copy of `name` and lets the pages behind it leave memory.
  void release(std::string_view name) const {
    {
      const std::lock_guard lock(cache_->mutex);
      if (const auto kept = cache_->tensors.find(name); kept != cache_->tensors.end()) cache_->tensors.erase(kept);
    }
    if constexpr (requires { base_.release(name); }) base_.release(name);
    adapter_.release(name);
  }

  [[nodiscard]] const Base& base() const noexcept { return base_; }
  [[nodiscard]] const peft_lora_adapter& adapter() const noexcept { return adapter_; }
  [[nodiscard]] const std::string& description() const noexcept { return description_; }

 private:
  struct cache {
    std::mutex mutex;
    std::map<std::string, memory_store, std::less<>> tensors;  // one adapted tensor each
  };
  static std::string describe(const Base& base) {
    if constexpr (requires { base.description(); }) {
      return std::string(base.description());
    } else {
      return "the base model";
    }
  }

  Base base_;
  peft_lora_adapter adapter_;
  Backend backend_;
  std::unique_ptr<cache> cache_;
  std::string description_;
};

}  // namespace alloy
