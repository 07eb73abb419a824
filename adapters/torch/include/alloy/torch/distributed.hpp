#pragma once
// Data-parallel training over LibTorch's own distributed layer (c10d, Gloo): the process group
// a training loop needs to keep N ranks in lock step, with alloy's objects (a memory_store such as
// a merged G) broadcast as they are.
//
// Ranks are started the way PyTorch users start them: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
// in the environment (torchrun sets them), a TCPStore served by rank 0, or by the launcher when
// TORCHELASTIC_USE_AGENT_STORE=True (as torchrun's agent does). Without WORLD_SIZE, or with
// WORLD_SIZE=1, there is one process and every collective returns at once.
//
// How a loop stays identical on every rank: each rank takes its shard of every global batch
// (shard()), scales its loss by its shard's share of the batch, and sum_gradients() between
// backward() and the optimizer's step leaves every rank with the gradient of the whole batch's
// mean loss, bit for bit the same on every rank (the all-reduce's result is one buffer sent to
// all). From the same parameters and gradients, every rank's optimizer, PAM masks and resets are
// the same, so nothing else needs to be sent; fingerprint() + check_same() verify it.
//
// Several ranks need the alloy::torch_distributed target (it defines USE_C10D_GLOO and links
// Gloo). With alloy::torch alone this header gives the one-process data_parallel, so that a loop
// written for N ranks builds everywhere; from_environment() then refuses WORLD_SIZE > 1. Gloo
// carries CPU tensors; CUDA gradients are reduced through a host buffer (NCCL is not wired in yet).

#include <torch/torch.h>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/exec/random.hpp"
#include "alloy/store/memory_store.hpp"

namespace alloy::torch_adapter {

// The standard variables of a data-parallel launch.
struct world_environment {
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  bool agent_store = false;  // the launcher serves the TCPStore; rank 0 connects as a client
};

namespace detail {

inline std::optional<std::string> environment_variable(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

inline int environment_integer(const char* name, int lowest, int highest, int fallback) {
  const auto text = environment_variable(name);
  if (!text) return fallback;
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text->c_str(), &end, 10);
  if (errno != 0 || end == text->c_str() || *end != '\0' || value < lowest || value > highest) {
    alloy::detail::fail(error_code::invalid_argument, "environment variable ", name, "='", *text,
                        "' is not an integer in [", lowest, ", ", highest, "]");
  }
  return static_cast<int>(value);
}

}  // namespace detail

// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; fails naming the variable that is
// missing or wrong. Without WORLD_SIZE: one process.
inline world_environment read_world_environment() {
  world_environment world;
  world.size = detail::environment_integer("WORLD_SIZE", 1, 1 << 16, 1);
  if (world.size == 1) return world;
  if (!detail::environment_variable("RANK")) {
    alloy::detail::fail(error_code::invalid_argument, "WORLD_SIZE=", world.size, " but RANK is not set");
  }
  world.rank = detail::environment_integer("RANK", 0, world.size - 1, 0);
  world.local_rank = detail::environment_integer("LOCAL_RANK", 0, world.size - 1, world.rank);
  if (auto address = detail::environment_variable("MASTER_ADDR")) world.master_addr = *address;
  if (!detail::environment_variable("MASTER_PORT")) {
    alloy::detail::fail(error_code::invalid_argument, "WORLD_SIZE=", world.size, " but MASTER_PORT is not set");
  }
  world.master_port = detail::environment_integer("MASTER_PORT", 1, 65535, 0);
  world.agent_store = detail::environment_variable("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  return world;
}

// A content hash of tensors (their bytes, in order, after a copy to the host where needed).
inline std::uint64_t fingerprint(const std::vector<::torch::Tensor>& tensors) {
  std::uint64_t hash = 0x243f6a8885a308d3ull;
  for (const auto& tensor : tensors) {
    const ::torch::Tensor host = tensor.detach().to(::torch::kCPU).contiguous();
    const std::string_view bytes(static_cast<const char*>(host.data_ptr()), host.nbytes());
    hash = alloy::mix64(hash ^ alloy::fnv1a64(bytes));
  }
  return hash;
}

class data_parallel {
 public:
  // One process: every collective returns at once.
  data_parallel() = default;

#ifdef USE_C10D_GLOO
  // Rank `rank` of `size` over `store` (a TCPStore between processes; a HashStore between
  // threads of one process, as the tests do), Gloo's traffic on `device` (loopback by default).
  // Blocks until every rank has joined, up to `timeout`, which also bounds every collective.
  data_parallel(c10::intrusive_ptr<c10d::Store> store, int rank, int size,
                std::chrono::milliseconds timeout = std::chrono::minutes(5),
                std::shared_ptr<::gloo::transport::Device> device = nullptr)
      : rank_(rank), size_(size) {
    if (size < 1 || rank < 0 || rank >= size) {
      alloy::detail::fail(error_code::invalid_argument, "rank ", rank, " is outside a world of ", size, " processes");
    }
    if (size == 1) return;
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(device ? std::move(device) : c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    group_ = c10::make_intrusive<c10d::ProcessGroupGloo>(std::move(store), rank, size, options);
  }

  // From the standard environment (read_world_environment): rank 0 serves the TCPStore unless the
  // launcher does. Gloo uses GLOO_SOCKET_IFNAME's interface where it is set, loopback where
  // MASTER_ADDR is this machine, else the address this machine's hostname resolves to.
  static data_parallel from_environment(std::chrono::milliseconds timeout = std::chrono::minutes(5)) {
    const world_environment world = read_world_environment();
    if (world.size == 1) return {};
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(world.master_port);
    options.isServer = world.rank == 0 && !world.agent_store;
    options.numWorkers = world.size;
    options.waitWorkers = false;
    options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(world.master_addr, options);
    std::shared_ptr<::gloo::transport::Device> device;
    if (auto interface = detail::environment_variable("GLOO_SOCKET_IFNAME")) {
      device = c10d::ProcessGroupGloo::createDeviceForInterface(*interface);
    } else if (world.master_addr == "localhost" || world.master_addr.rfind("127.", 0) == 0) {
      device = c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
    } else {
      device = c10d::ProcessGroupGloo::createDefaultDevice();
    }
    return {std::move(store), world.rank, world.size, timeout, std::move(device)};
  }
#else
  static data_parallel from_environment(std::chrono::milliseconds = std::chrono::minutes(5)) {
    const world_environment world = read_world_environment();
    if (world.size != 1) {
      alloy::detail::fail(error_code::invalid_argument, "WORLD_SIZE=", world.size,
                          " but this program was built without c10d's Gloo (link alloy::torch_distributed)");
    }
    return {};
  }
#endif

  [[nodiscard]] int rank() const noexcept { return rank_; }
  [[nodiscard]] int size() const noexcept { return size_; }
  [[nodiscard]] bool is_root() const noexcept { return rank_ == 0; }

  // This rank's contiguous part [begin, end) of `count` items; the parts' sizes differ by at most
  // one, earlier ranks taking the larger ones, so that the ranks together see each item once.
  [[nodiscard]] std::pair<std::int64_t, std::int64_t> shard(std::int64_t count) const noexcept {
    const std::int64_t base = count / size_, extra = count % size_;
    const std::int64_t begin = rank_ * base + std::min<std::int64_t>(rank_, extra);
    return {begin, begin + base + (rank_ < extra ? 1 : 0)};
  }

  // Replaces every parameter's gradient by the sum over the ranks (a missing gradient counts as
  // zero), in one all-reduce of one flat buffer. Every rank ends with the same bits.
  void sum_gradients([[maybe_unused]] const std::vector<::torch::Tensor>& parameters) const {
    if (size_ == 1) return;
#ifdef USE_C10D_GLOO
    std::vector<::torch::Tensor> pieces;
    pieces.reserve(parameters.size());
    for (const auto& p : parameters) {
      const ::torch::Tensor& g = p.grad();
      pieces.push_back(g.defined() ? g.detach().to(::torch::kCPU, ::torch::kFloat32).reshape({-1})
                                   : ::torch::zeros({p.numel()}, ::torch::kFloat32));
    }
    std::vector<at::Tensor> flat{::torch::cat(pieces)};
    group_->allreduce(flat)->wait();
    std::int64_t offset = 0;
    ::torch::NoGradGuard no_grad;
    for (const auto& p : parameters) {
      const ::torch::Tensor summed = flat[0].narrow(0, offset, p.numel()).view(p.sizes());
      offset += p.numel();
      ::torch::Tensor& g = p.mutable_grad();  // (the handle is const, its gradient not)
      if (g.defined()) {
        g.copy_(summed);
      } else {
        g = summed.to(p.options()).clone();
      }
    }
#endif
  }

  // Tensors (the same shapes and dtypes on every rank) set to rank root's values, in place.
  void broadcast([[maybe_unused]] const std::vector<::torch::Tensor>& tensors, int root = 0) const {
    check_root(root);
    if (size_ == 1) return;
#ifdef USE_C10D_GLOO
    ::torch::NoGradGuard no_grad;
    for (const auto& tensor : tensors) {
      std::vector<at::Tensor> host{tensor.detach().to(::torch::kCPU).contiguous().clone()};
      c10d::BroadcastOptions options;
      options.rootRank = root;
      group_->broadcast(host, options)->wait();
      tensor.copy_(host[0]);
    }
#endif
  }

  // A store's values set to rank root's, in one broadcast of its bytes. Every rank must hold the
  // same names, dtypes and shapes (checked: a mismatch fails on every rank, naming the store).
  void broadcast([[maybe_unused]] alloy::memory_store& store, int root = 0) const {
    check_root(root);
    if (size_ == 1) return;
#ifdef USE_C10D_GLOO
    std::uint64_t layout = 0x9e3779b97f4a7c15ull;
    std::int64_t bytes = 0;
    for (const auto& name : store.names()) {
      const const_tensor_view view = store.view(name);
      layout = alloy::mix64(layout ^ alloy::fnv1a64(name));
      layout = alloy::mix64(layout ^ static_cast<std::uint64_t>(view.dtype()));
      layout = alloy::mix64(layout ^ view.shape().rank());
      for (const auto extent : view.shape().extents()) layout = alloy::mix64(layout ^ static_cast<std::uint64_t>(extent));
      bytes += static_cast<std::int64_t>(view.byte_size());
    }
    check_same(layout, "the broadcast store's names, dtypes and shapes");
    std::vector<at::Tensor> buffer{::torch::empty({bytes}, ::torch::kUInt8)};
    auto* data = static_cast<std::byte*>(buffer[0].data_ptr());
    if (rank_ == root) {
      for (const auto& name : store.names()) {
        const const_tensor_view view = store.view(name);
        if (view.byte_size() != 0) std::memcpy(data, view.data(), view.byte_size());
        data += view.byte_size();
      }
    }
    c10d::BroadcastOptions options;
    options.rootRank = root;
    group_->broadcast(buffer, options)->wait();
    if (rank_ == root) return;
    data = static_cast<std::byte*>(buffer[0].data_ptr());
    for (const auto& name : store.names()) {
      tensor_view view = store.mutable_view(name);
      if (view.byte_size() != 0) std::memcpy(view.data(), data, view.byte_size());
      data += view.byte_size();
    }
#endif
  }

  // Text (a state file, a configuration) set to rank root's, for instance what only the root could
  // read from its disk.
  void broadcast([[maybe_unused]] std::string& text, int root = 0) const {
    check_root(root);
    if (size_ == 1) return;
#ifdef USE_C10D_GLOO
    c10d::BroadcastOptions options;
    options.rootRank = root;
    std::vector<at::Tensor> length{::torch::tensor(std::vector<std::int64_t>{static_cast<std::int64_t>(text.size())}, ::torch::kInt64)};
    group_->broadcast(length, options)->wait();
    const std::int64_t bytes = length[0].item<std::int64_t>();
    if (bytes == 0) {
      text.clear();
      return;
    }
    std::vector<at::Tensor> buffer{::torch::empty({bytes}, ::torch::kUInt8)};
    if (rank_ == root) std::memcpy(buffer[0].data_ptr(), text.data(), text.size());
    group_->broadcast(buffer, options)->wait();
    if (rank_ != root) text.assign(static_cast<const char*>(buffer[0].data_ptr()), static_cast<std::size_t>(bytes));
#endif
  }

  // The sum over the ranks of integer counts (exact; for instance correct predictions).
  [[nodiscard]] std::vector<std::int64_t> sum(std::vector<std::int64_t> values) const {
    if (size_ == 1 || values.empty()) return values;
#ifdef USE_C10D_GLOO
    std::vector<at::Tensor> buffer{::torch::tensor(values, ::torch::kInt64)};
    group_->allreduce(buffer)->wait();
    const auto* summed = buffer[0].data_ptr<std::int64_t>();
    return {summed, summed + values.size()};
#else
    return values;
#endif
  }

  // Fails, on every rank, when the ranks' values differ: `what` names what should agree.
  void check_same([[maybe_unused]] std::uint64_t value, [[maybe_unused]] std::string_view what) const {
    if (size_ == 1) return;
#ifdef USE_C10D_GLOO
    // Min and max of the value's two 32-bit halves (exact in int64): equal everywhere iff min == max.
    const auto high = static_cast<std::int64_t>(value >> 32), low = static_cast<std::int64_t>(value & 0xffffffffu);
    std::vector<at::Tensor> lowest{::torch::tensor(std::vector<std::int64_t>{high, low}, ::torch::kInt64)};
    std::vector<at::Tensor> highest{lowest[0].clone()};
    c10d::AllreduceOptions min_options, max_options;
    min_options.reduceOp = c10d::ReduceOp::MIN;
    max_options.reduceOp = c10d::ReduceOp::MAX;
    group_->allreduce(lowest, min_options)->wait();
    group_->allreduce(highest, max_options)->wait();
    if (!lowest[0].equal(highest[0])) {
      alloy::detail::fail(error_code::invalid_argument, "data parallel: ", what, " differ between the ", size_,
                          " ranks (rank ", rank_, " of them)");
    }
#endif
  }

  // Waits for every rank.
  void barrier() const {
    if (size_ == 1) return;
#ifdef USE_C10D_GLOO
    group_->barrier()->wait();
#endif
  }

 private:
  void check_root(int root) const {
    if (root < 0 || root >= size_) {
      alloy::detail::fail(error_code::invalid_argument, "broadcast from rank ", root, " in a world of ", size_, " processes");
    }
  }

  int rank_ = 0;
  int size_ = 1;
#ifdef USE_C10D_GLOO
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group_;
#endif
};

}  // namespace alloy::torch_adapter
