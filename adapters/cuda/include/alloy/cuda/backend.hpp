#pragma once
// The CUDA execution backend: the primitives of alloy/exec as kernels on one CUDA stream, so the
// merge policies run on the GPU unchanged (as CUB's algorithms take a stream).
//
// This header is plain C++ over the CUDA runtime API: any compiler can include it. The kernels
// themselves are in primitives.cuh (nvcc only); translation units that nvcc does not compile call
// alloy::cuda::merge_with (merge.hpp), which the alloy::cuda library compiles once for every policy.
//
// Thread safety: a backend is a handle (copies share one state); use it from one host thread at a
// time. Work is issued in stream order; functions that return host values (sums, thresholds)
// wait for the stream.

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/exec/select.hpp"

namespace alloy::cuda {

// Turns a failed CUDA runtime call into an alloy::error naming what was being done.
inline void check(cudaError_t status, std::string_view what) {
  if (status != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls can report their own
    alloy::fail(error_code::device, what, ": ", cudaGetErrorName(status), " (", cudaGetErrorString(status), ")");
  }
}

// Whether a CUDA device can be used here: a driver and at least one device.
[[nodiscard]] inline bool device_available() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return count > 0;
}

// The name of device `device` ("NVIDIA H100 80GB HBM3"), for reports.
[[nodiscard]] inline std::string device_name(int device = 0) {
  cudaDeviceProp properties{};
  check(cudaGetDeviceProperties(&properties, device), "reading the properties of CUDA device " + std::to_string(device));
  return properties.name;
}

// Device memory allocated and freed in stream order (cudaMallocAsync), so temporaries of one merge
// need no device-wide synchronisation.
template <class T>
class device_buffer {
 public:
  device_buffer() = default;
  device_buffer(std::size_t count, cudaStream_t stream) : count_(count), stream_(stream) {
    if (count == 0) return;
    void* raw = nullptr;
    check(cudaMallocAsync(&raw, count * sizeof(T), stream),
          "allocating " + std::to_string(count * sizeof(T)) + " bytes of GPU memory");
    data_ = static_cast<T*>(raw);
  }
  device_buffer(device_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)), stream_(other.stream_) {}
  device_buffer& operator=(device_buffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
      stream_ = other.stream_;
    }
    return *this;
  }
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer() { release(); }

  [[nodiscard]] T* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return count_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) (void)cudaFreeAsync(data_, stream_);
    data_ = nullptr;
  }
  T* data_ = nullptr;
  std::size_t count_ = 0;
  cudaStream_t stream_ = nullptr;
};

// Page-locked host memory: the source and destination of asynchronous copies.
template <class T>
class pinned_buffer {
 public:
  pinned_buffer() = default;
  explicit pinned_buffer(std::size_t count) : count_(count) {
    if (count == 0) return;
    void* raw = nullptr;
    check(cudaMallocHost(&raw, count * sizeof(T)), "allocating " + std::to_string(count * sizeof(T)) + " bytes of pinned host memory");
    data_ = static_cast<T*>(raw);
  }
  pinned_buffer(pinned_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  pinned_buffer& operator=(pinned_buffer&& other) noexcept {
    if (this != &other) {
      if (data_ != nullptr) (void)cudaFreeHost(data_);
      data_ = std::exchange(other.data_, nullptr);
      count_ = std::exchange(other.count_, 0);
    }
    return *this;
  }
  pinned_buffer(const pinned_buffer&) = delete;
  pinned_buffer& operator=(const pinned_buffer&) = delete;
  ~pinned_buffer() {
    if (data_ != nullptr) (void)cudaFreeHost(data_);
  }
  [[nodiscard]] T* data() const noexcept { return data_; }
  [[nodiscard]] std::size_t size() const noexcept { return count_; }

 private:
  T* data_ = nullptr;
  std::size_t count_ = 0;
};

// One bit per element in device memory, in the layout of alloy::bit_mask (64-bit words, element
// i in bit i % 64 of word i / 64), so the policies' kernels read both alike.
class device_mask {
 public:
  device_mask() = default;
  device_mask(std::size_t size, cudaStream_t stream) : words_((size + 63) / 64, stream), size_(size) {}

  [[nodiscard]] const std::uint64_t* words() const noexcept { return words_.data(); }
  [[nodiscard]] std::uint64_t* mutable_words() noexcept { return words_.data(); }
  [[nodiscard]] std::size_t word_count() const noexcept { return words_.size(); }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }

  // A device copy of a host mask (waits for the copy, so `mask` may go right after).
  static device_mask from_host(const bit_mask& mask, cudaStream_t stream) {
    device_mask copy(mask.size(), stream);
    if (copy.word_count() != 0) {
      check(cudaMemcpyAsync(copy.mutable_words(), mask.words(), copy.word_count() * 8, cudaMemcpyHostToDevice, stream),
            "copying a mask to the GPU");
    }
    check(cudaStreamSynchronize(stream), "waiting for a mask");
    return copy;
  }
  // A host copy (waits for the stream): for tests and inspection.
  [[nodiscard]] bit_mask to_host(cudaStream_t stream) const {
    std::vector<std::uint64_t> host(words_.size());
    if (!host.empty()) {
      check(cudaMemcpyAsync(host.data(), words_.data(), host.size() * 8, cudaMemcpyDeviceToHost, stream),
            "copying a mask to the host");
    }
    check(cudaStreamSynchronize(stream), "waiting for a mask");
    bit_mask mask(size_);
    for (std::size_t w = 0; w < host.size(); ++w) mask.set_word(w, host[w]);
    return mask;
  }

 private:
  device_buffer<std::uint64_t> words_;
  std::size_t size_ = 0;
};

// A CUDA event: a point in a stream that the host or another stream can wait for, and time.
class event {
 public:
  explicit event(bool timing = false) {
    check(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming), "creating a CUDA event");
  }
  event(event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  event& operator=(event&& other) noexcept {
    if (this != &other) {
      if (event_ != nullptr) (void)cudaEventDestroy(event_);
      event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
  }
  event(const event&) = delete;
  event& operator=(const event&) = delete;
  ~event() {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
  }

  void record(cudaStream_t stream) { check(cudaEventRecord(event_, stream), "recording a CUDA event"); }
  void synchronize() const { check(cudaEventSynchronize(event_), "waiting for a CUDA event"); }
  // Makes `stream` wait for this event without blocking the host.
  void wait_in(cudaStream_t stream) const { check(cudaStreamWaitEvent(stream, event_, 0), "making a stream wait"); }
  // Milliseconds from `start` to this event (both recorded with timing).
  [[nodiscard]] float milliseconds_since(const event& start) const {
    float ms = 0.0f;
    check(cudaEventElapsedTime(&ms, start.event_, event_), "timing CUDA events");
    return ms;
  }

 private:
  cudaEvent_t event_ = nullptr;
};

class backend;

namespace detail {

// Small arrays kernels read (weights, per-model terms, input pointers) go through a ring of pinned
// host memory mirrored on the device: copied into the ring, then to the device asynchronously in
// stream order. Before the ring wraps, the stream is drained, so no pending copy or kernel still
// reads the part being reused.
class argument_ring {
 public:
  explicit argument_ring(cudaStream_t stream) : stream_(stream) {}

  const void* stage(const void* data, std::size_t bytes) {
    constexpr std::size_t alignment = 64;
    const std::size_t need = (bytes + alignment - 1) / alignment * alignment;
    if (need > host_.size()) {
      check(cudaStreamSynchronize(stream_), "waiting for the stream before growing the argument ring");
      const std::size_t capacity = std::max<std::size_t>(need, std::size_t{1} << 20);
      host_ = pinned_buffer<std::byte>(capacity);
      device_ = device_buffer<std::byte>(capacity, stream_);
      used_ = 0;
    } else if (used_ + need > host_.size()) {
      check(cudaStreamSynchronize(stream_), "waiting for the stream before reusing the argument ring");
      used_ = 0;
    }
    std::memcpy(host_.data() + used_, data, bytes);
    std::byte* target = device_.data() + used_;
    check(cudaMemcpyAsync(target, host_.data() + used_, bytes, cudaMemcpyHostToDevice, stream_),
          "copying kernel arguments to the GPU");
    used_ += need;
    return target;
  }

 private:
  cudaStream_t stream_;
  pinned_buffer<std::byte> host_;
  device_buffer<std::byte> device_;
  std::size_t used_ = 0;
};

struct backend_state {
  cudaStream_t stream = nullptr;
  bool owns_stream = false;
  int multiprocessors = 1;
  argument_ring arguments;

  backend_state(cudaStream_t s, bool owns) : stream(s), owns_stream(owns), arguments(s) {
    int device = 0;
    check(cudaGetDevice(&device), "finding the current CUDA device");
    check(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device),
          "reading the multiprocessor count of CUDA device " + std::to_string(device));
  }
  backend_state(const backend_state&) = delete;
  backend_state& operator=(const backend_state&) = delete;
  ~backend_state() {
    if (owns_stream) {
      (void)cudaStreamSynchronize(stream);
      arguments = argument_ring(nullptr);
      (void)cudaStreamDestroy(stream);
    }
  }
};

}  // namespace detail

// The handle policies are run with: a stream of the current device (the default stream unless
// given; the torch adapter passes torch's current stream), and the scratch the primitives share.
class backend {
 public:
  using mask_type = device_mask;

  // Runs on `stream` (not owned) of the current device.
  explicit backend(cudaStream_t stream = nullptr) : state_(std::make_shared<detail::backend_state>(stream, false)) {}

  // Runs on a stream of its own, created now and destroyed with the last copy of the handle.
  static backend with_own_stream() {
    cudaStream_t stream = nullptr;
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "creating a CUDA stream");
    backend b(nullptr);
    b.state_ = std::make_shared<detail::backend_state>(stream, true);
    return b;
  }

  [[nodiscard]] cudaStream_t stream() const noexcept { return state_->stream; }
  [[nodiscard]] int multiprocessors() const noexcept { return state_->multiprocessors; }
  void synchronize() const { check(cudaStreamSynchronize(state_->stream), "waiting for the CUDA stream"); }

  // Copies `values` to device memory that stays valid for the work issued after it on this stream.
  template <class T>
  [[nodiscard]] const T* stage(std::span<const T> values) const {
    if (values.empty()) return nullptr;
    return static_cast<const T*>(state_->arguments.stage(values.data(), values.size_bytes()));
  }

 private:
  std::shared_ptr<detail::backend_state> state_;
};

// The number of set bits of a device mask. Waits for the stream (the count comes back to the
// host). Compiled in the alloy::cuda library (align.cu), so that any compiler can call it.
std::size_t count_set(const backend& b, const device_mask& mask);

// The backend hook the policies call (see alloy::stage_arguments for the CPU).
template <class T>
[[nodiscard]] const T* stage_arguments(const backend& b, std::span<const T> values) {
  return b.stage(values);
}

// Where a pointer lives: device memory (or managed) is what the kernels read directly.
[[nodiscard]] inline bool is_device_pointer(const void* pointer) {
  if (pointer == nullptr) return false;
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, pointer) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
}

}  // namespace alloy::cuda
