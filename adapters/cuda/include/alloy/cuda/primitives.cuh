#pragma once
// The primitives of alloy/exec as CUDA kernels: elementwise, reduce_sums, reduce_rows,
// select_where, rank_band_mask, nth_largest and rank_sampling_mask for alloy::cuda::backend.
// Policies find them by argument-dependent lookup, so a policy's merge() runs here unchanged,
// with its ALLOY_HD kernel objects as device code.
//
// Semantics match the CPU backend exactly: f32 compute from f32/f16/bf16 loads, one rounding into
// the output dtype; masks by the same rank order (magnitude descending, then index) with the same
// tie rule, so a mask is bit-identical for the same inputs; random keeps from the same
// counter-based stream. Reductions accumulate in f64 per block and combine blocks in block order
// on the host, so they are deterministic for a given size (their order differs from the CPU's,
// hence last-bit differences in f64 sums). Compile with -fmad=false to keep f32 arithmetic free
// of fused multiply-adds, as on the CPU (the alloy::cuda target does).

#if !defined(__CUDACC__)
#error "alloy/cuda/primitives.cuh holds CUDA kernels: compile it with nvcc, or call alloy::cuda::merge_with (alloy/cuda/merge.hpp)"
#endif

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_sort.cuh>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "alloy/core/half.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/cuda/backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/random.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/exec/select.hpp"

namespace alloy::cuda {
namespace detail {

using alloy::detail::fail;

inline constexpr int block_threads = 256;

// The inputs of a kernel as device arrays (staged): their data pointers and dtypes.
struct device_inputs {
  const void* const* data = nullptr;
  const dtype* types = nullptr;
  std::size_t count = 0;
};

__device__ __forceinline__ float load_element(const void* data, dtype type, std::size_t i) {
  switch (type) {
    case dtype::bf16: return bf16_bits_to_f32(__ldg(static_cast<const unsigned short*>(data) + i));
    case dtype::f16: return f16_bits_to_f32(__ldg(static_cast<const unsigned short*>(data) + i));
    default: return __ldg(static_cast<const float*>(data) + i);
  }
}

// Four consecutive elements from `first` (a multiple of 4, pointer aligned) in one vector load.
__device__ __forceinline__ void load_quad(const void* data, dtype type, std::size_t first, float* out) {
  if (type == dtype::f32) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(data) + first));
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    return;
  }
  const uint2 raw = __ldg(reinterpret_cast<const uint2*>(static_cast<const unsigned short*>(data) + first));
  const std::uint16_t h[4] = {static_cast<std::uint16_t>(raw.x & 0xffffu), static_cast<std::uint16_t>(raw.x >> 16),
                              static_cast<std::uint16_t>(raw.y & 0xffffu), static_cast<std::uint16_t>(raw.y >> 16)};
  for (int e = 0; e < 4; ++e) out[e] = type == dtype::bf16 ? bf16_bits_to_f32(h[e]) : f16_bits_to_f32(h[e]);
}

__device__ __forceinline__ void store_element(void* data, dtype type, std::size_t i, float value) {
  switch (type) {
    case dtype::bf16: static_cast<std::uint16_t*>(data)[i] = f32_to_bf16_bits(value); return;
    case dtype::f16: static_cast<std::uint16_t*>(data)[i] = f32_to_f16_bits(value); return;
    default: static_cast<float*>(data)[i] = value; return;
  }
}

__device__ __forceinline__ void store_quad(void* data, dtype type, std::size_t first, const float* values) {
  if (type == dtype::f32) {
    *reinterpret_cast<float4*>(static_cast<float*>(data) + first) = make_float4(values[0], values[1], values[2], values[3]);
    return;
  }
  std::uint32_t h[4];
  for (int e = 0; e < 4; ++e) h[e] = type == dtype::bf16 ? f32_to_bf16_bits(values[e]) : f32_to_f16_bits(values[e]);
  *reinterpret_cast<uint2*>(static_cast<std::uint16_t*>(data) + first) = make_uint2(h[0] | (h[1] << 16), h[2] | (h[3] << 16));
}

// values[i] for a kernel: input i at one element, read from global memory on demand.
struct global_values {
  device_inputs inputs;
  std::size_t index;
  __device__ float operator[](std::size_t i) const { return load_element(inputs.data[i], inputs.types[i], index); }
  [[nodiscard]] __device__ std::size_t size() const { return inputs.count; }
};

// values[i] from registers: K inputs loaded four elements at a time, element e of the quad.
template <int K>
struct quad_values {
  const float* first;  // &loaded[e]; input i at first[4 i]
  __device__ float operator[](std::size_t i) const { return first[i * 4]; }
  [[nodiscard]] __device__ static constexpr std::size_t size() { return K; }
};

template <int K, class Kernel>
__global__ void __launch_bounds__(block_threads)
    elementwise_kernel(Kernel kernel, device_inputs in, void* out, dtype out_type, std::size_t n, bool aligned) {
  const std::size_t quads = (n + 3) / 4;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t q = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < quads; q += stride) {
    const std::size_t first = q * 4;
    const bool whole = aligned && first + 4 <= n;
    float result[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if constexpr (K > 0) {
      float loaded[K * 4];
#pragma unroll
      for (int i = 0; i < K; ++i) {
        if (whole) {
          load_quad(in.data[i], in.types[i], first, loaded + i * 4);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            loaded[i * 4 + e] = first + e < n ? load_element(in.data[i], in.types[i], first + e) : 0.0f;
          }
        }
      }
#pragma unroll
      for (int e = 0; e < 4; ++e) result[e] = kernel(quad_values<K>{loaded + e}, first + e);
    } else {
      for (int e = 0; e < 4; ++e) {
        if (first + e < n) result[e] = kernel(global_values{in, first + e}, first + e);
      }
    }
    if (whole) {
      store_quad(out, out_type, first, result);
    } else {
      for (int e = 0; e < 4; ++e) {
        if (first + e < n) store_element(out, out_type, first + e, result[e]);
      }
    }
  }
}

inline device_inputs stage_inputs(const backend& b, std::span<const const_tensor_view> inputs) {
  std::vector<const void*> data;
  std::vector<dtype> types;
  for (const auto& input : inputs) {
    data.push_back(input.data());
    types.push_back(input.dtype());
  }
  return {b.stage(std::span<const void* const>(data)), b.stage(std::span<const dtype>(types)), inputs.size()};
}

inline unsigned grid_for(const backend& b, std::size_t work_items) {
  const std::size_t blocks = (work_items + block_threads - 1) / block_threads;
  const std::size_t cap = static_cast<std::size_t>(b.multiprocessors()) * 8;
  return static_cast<unsigned>(std::max<std::size_t>(1, std::min(blocks, cap)));
}

}  // namespace detail

// output[index] = kernel(values, index) for every element, on the backend's stream.
template <class Kernel>
void elementwise(const backend& b, tensor_view output, std::span<const const_tensor_view> inputs, const Kernel& kernel) {
  alloy::detail::check_computable(output, "the output tensor");
  const std::size_t n = output.numel();
  alloy::detail::check_inputs(inputs, n);
  if (n == 0) return;
  bool aligned = reinterpret_cast<std::uintptr_t>(output.data()) % 16 == 0;
  for (const auto& input : inputs) {
    aligned = aligned && reinterpret_cast<std::uintptr_t>(input.data()) % 16 == 0;
    if (input.data() == output.data() && input.dtype() != output.dtype()) {
      alloy::fail(error_code::invalid_argument, "an input aliases the output with another dtype");
    }
  }
  const detail::device_inputs staged = detail::stage_inputs(b, inputs);
  const unsigned grid = detail::grid_for(b, (n + 3) / 4);
  const auto launch = [&]<int K>() {
    detail::elementwise_kernel<K, Kernel><<<grid, detail::block_threads, 0, b.stream()>>>(
        kernel, staged, output.data(), output.dtype(), n, aligned);
  };
  switch (inputs.size()) {
    case 1: launch.template operator()<1>(); break;
    case 2: launch.template operator()<2>(); break;
    case 3: launch.template operator()<3>(); break;
    case 4: launch.template operator()<4>(); break;
    case 5: launch.template operator()<5>(); break;
    case 6: launch.template operator()<6>(); break;
    case 7: launch.template operator()<7>(); break;
    case 8: launch.template operator()<8>(); break;
    case 9: launch.template operator()<9>(); break;
    default: launch.template operator()<0>(); break;
  }
  check(cudaGetLastError(), "launching an elementwise kernel");
}

namespace detail {

// One 64-bit word of the mask per thread: bits of the elements [64 w, 64 w + 64) that satisfy
// the predicate. Bits past the end stay zero.
template <class Predicate>
__global__ void __launch_bounds__(block_threads)
    select_where_kernel(Predicate predicate, device_inputs in, std::size_t n, std::uint64_t* words, std::size_t word_count) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t w = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < word_count; w += stride) {
    std::uint64_t word = 0;
    const std::size_t first = w * 64;
    const std::size_t count = n - first < 64 ? n - first : 64;
    for (std::size_t b = 0; b < count; ++b) {
      if (predicate(global_values{in, first + b}, first + b)) word |= std::uint64_t{1} << b;
    }
    words[w] = word;
  }
}

// Adds the number of set bits among the first `size` bits of `words` to *count.
__global__ void __launch_bounds__(block_threads)
    count_bits_kernel(const std::uint64_t* words, std::size_t size, unsigned long long* count) {
  const std::size_t word_count = (size + 63) / 64;
  unsigned long long local = 0;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t w = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < word_count; w += stride) {
    std::uint64_t word = words[w];
    if (w + 1 == word_count && size % 64 != 0) word &= (std::uint64_t{1} << (size % 64)) - 1;
    local += static_cast<unsigned long long>(__popcll(word));
  }
  if (local != 0) atomicAdd(count, local);
}

// Queues the count of a mask's set bits into *count (device memory, zeroed beforehand).
inline void count_bits_async(const backend& b, const device_mask& mask, unsigned long long* count) {
  if (mask.size() == 0) return;
  const unsigned grid = grid_for(b, mask.word_count());
  count_bits_kernel<<<grid, block_threads, 0, b.stream()>>>(mask.words(), mask.size(), count);
  check(cudaGetLastError(), "launching a bit-count kernel");
}

}  // namespace detail

// The mask of the elements where predicate(values, index) holds, on the backend's stream.
template <class Predicate>
device_mask select_where(const backend& b, std::span<const const_tensor_view> inputs, std::size_t elements,
                         const Predicate& predicate) {
  alloy::detail::check_inputs(inputs, elements);
  device_mask mask(elements, b.stream());
  if (elements == 0) return mask;
  const detail::device_inputs staged = detail::stage_inputs(b, inputs);
  const unsigned grid = detail::grid_for(b, mask.word_count());
  detail::select_where_kernel<<<grid, detail::block_threads, 0, b.stream()>>>(predicate, staged, elements,
                                                                             mask.mutable_words(), mask.word_count());
  check(cudaGetLastError(), "launching a mask kernel");
  return mask;
}

namespace detail {

// Sums are accumulated `reduce_window` terms per pass; an accumulator writes all its terms, and
// those outside the window land in a discarded slot.
inline constexpr std::size_t reduce_window = 16;

struct window_sums {
  double* local;  // reduce_window + 1 slots, the last one discarded
  std::size_t first;
  __device__ double& operator[](std::size_t term) const {
    const std::size_t at = term - first;
    return local[at < reduce_window ? at : reduce_window];
  }
};

template <class Accumulate>
__global__ void __launch_bounds__(block_threads)
    reduce_kernel(Accumulate accumulate, device_inputs in, std::size_t n, std::size_t first_term, double* partials) {
  double local[reduce_window + 1];
  for (std::size_t t = 0; t <= reduce_window; ++t) local[t] = 0.0;
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    accumulate(global_values{in, i}, i, window_sums{local, first_term});
  }
  constexpr int warps = block_threads / 32;
  __shared__ double warp_sums[warps][reduce_window];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  for (std::size_t t = 0; t < reduce_window; ++t) {
    double v = local[t];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) warp_sums[warp][t] = v;
  }
  __syncthreads();
  if (threadIdx.x < reduce_window) {
    double total = 0.0;
    for (int w = 0; w < warps; ++w) total += warp_sums[w][threadIdx.x];
    partials[static_cast<std::size_t>(blockIdx.x) * reduce_window + threadIdx.x] = total;
  }
}

}  // namespace detail

// Sums `terms` per-element quantities: accumulate(values, index, sums) adds element `index`'s
// contributions into sums[0 .. terms). Waits for the stream (the sums come back to the host).
template <class Accumulate>
std::vector<double> reduce_sums(const backend& b, std::span<const const_tensor_view> inputs, std::size_t elements,
                                std::size_t terms, const Accumulate& accumulate) {
  alloy::detail::check_inputs(inputs, elements);
  std::vector<double> total(terms, 0.0);
  if (elements == 0 || terms == 0) return total;
  const detail::device_inputs staged = detail::stage_inputs(b, inputs);
  // A fixed grid for a given size: the same blocks, hence the same sums, on any device.
  const unsigned grid = static_cast<unsigned>(std::min<std::size_t>(1024, (elements + 4095) / 4096));
  device_buffer<double> partials(static_cast<std::size_t>(grid) * detail::reduce_window, b.stream());
  std::vector<double> host(partials.size());
  for (std::size_t first = 0; first < terms; first += detail::reduce_window) {
    detail::reduce_kernel<<<grid, detail::block_threads, 0, b.stream()>>>(accumulate, staged, elements, first,
                                                                           partials.data());
    check(cudaGetLastError(), "launching a reduction kernel");
    check(cudaMemcpyAsync(host.data(), partials.data(), host.size() * sizeof(double), cudaMemcpyDeviceToHost, b.stream()),
          "copying partial sums to the host");
    b.synchronize();
    for (unsigned block = 0; block < grid; ++block) {
      for (std::size_t t = first; t < std::min(terms, first + detail::reduce_window); ++t) {
        total[t] += host[block * detail::reduce_window + (t - first)];
      }
    }
  }
  return total;
}

namespace detail {

// One block per vector (blocks stride over the vectors): each thread sums its elements of the
// vector into a window of terms, then the block adds its threads' sums in a fixed tree.
template <class Accumulate>
__global__ void __launch_bounds__(block_threads)
    reduce_rows_kernel(Accumulate accumulate, device_inputs in, alloy::tensor_rows rows, std::size_t first_term,
                       std::size_t terms, double* sums) {
  constexpr int warps = block_threads / 32;
  __shared__ double warp_sums[warps][reduce_window];
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  for (std::size_t row = blockIdx.x; row < rows.count; row += gridDim.x) {
    double local[reduce_window + 1];
    for (std::size_t t = 0; t <= reduce_window; ++t) local[t] = 0.0;
    for (std::size_t j = threadIdx.x; j < rows.length; j += blockDim.x) {
      const std::size_t i = rows.element(row, j);
      accumulate(global_values{in, i}, i, window_sums{local, first_term});
    }
    for (std::size_t t = 0; t < reduce_window; ++t) {
      double v = local[t];
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
      if (lane == 0) warp_sums[warp][t] = v;
    }
    __syncthreads();
    if (threadIdx.x < reduce_window && first_term + threadIdx.x < terms) {
      double total = 0.0;
      for (int w = 0; w < warps; ++w) total += warp_sums[w][threadIdx.x];
      sums[row * terms + first_term + threadIdx.x] = total;
    }
    __syncthreads();  // warp_sums is reused by the next vector
  }
}

}  // namespace detail

// Sums `terms` per-element quantities within each vector of `rows` (see alloy::reduce_rows):
// rows.count * terms sums, vector by vector. Waits for the stream. Each vector is summed by one
// block in a fixed order, so the sums do not depend on the device; a single vector is the whole
// tensor, summed by reduce_sums' blocks.
template <class Accumulate>
std::vector<double> reduce_rows(const backend& b, std::span<const const_tensor_view> inputs, const alloy::tensor_rows& rows,
                                std::size_t terms, const Accumulate& accumulate) {
  const std::size_t elements = rows.count * rows.length;
  alloy::detail::check_inputs(inputs, elements);
  if (rows.count == 1) return reduce_sums(b, inputs, elements, terms, accumulate);
  std::vector<double> host(rows.count * terms, 0.0);
  if (elements == 0 || terms == 0) return host;
  const detail::device_inputs staged = detail::stage_inputs(b, inputs);
  device_buffer<double> sums(host.size(), b.stream());
  const unsigned grid = static_cast<unsigned>(std::min<std::size_t>(rows.count, 65535));
  for (std::size_t first = 0; first < terms; first += detail::reduce_window) {
    detail::reduce_rows_kernel<<<grid, detail::block_threads, 0, b.stream()>>>(accumulate, staged, rows, first, terms,
                                                                               sums.data());
    check(cudaGetLastError(), "launching a row reduction kernel");
  }
  check(cudaMemcpyAsync(host.data(), sums.data(), host.size() * sizeof(double), cudaMemcpyDeviceToHost, b.stream()),
        "copying row sums to the host");
  b.synchronize();
  return host;
}

namespace detail {

inline constexpr std::size_t segment_elements = block_threads * 32;  // one block of the mask kernels

template <class Value>
__global__ void __launch_bounds__(block_threads)
    radix_histogram_kernel(Value value, device_inputs in, std::size_t n, std::uint32_t prefix, std::uint32_t prefix_mask,
                           int shift, std::uint32_t bins, unsigned long long* histogram) {
  __shared__ unsigned int counts[2048];
  for (std::uint32_t bin = threadIdx.x; bin < bins; bin += blockDim.x) counts[bin] = 0;
  __syncthreads();
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const std::uint32_t key = alloy::detail::float_bits(alloy::detail::rank_magnitude(value(global_values{in, i}, i)));
    if ((key & prefix_mask) == prefix) atomicAdd(&counts[(key >> shift) & (bins - 1)], 1u);
  }
  __syncthreads();
  for (std::uint32_t bin = threadIdx.x; bin < bins; bin += blockDim.x) {
    if (counts[bin] != 0) atomicAdd(&histogram[bin], static_cast<unsigned long long>(counts[bin]));
  }
}

struct selection {
  float threshold = 0.0f;
  std::size_t greater = 0;  // elements strictly above the threshold
};

// The element at `position` of the descending order of magnitudes: three histogram passes over
// the magnitudes' bits (11, 11 and 10 bits), as the CPU backend's radix select.
template <class Value>
selection select_descending(const backend& b, const device_inputs& in, std::size_t n, const Value& value,
                            std::size_t position) {
  constexpr int shifts[3] = {21, 10, 0};
  constexpr int widths[3] = {11, 11, 10};
  device_buffer<unsigned long long> histogram(2048, b.stream());
  std::vector<unsigned long long> host(2048);
  std::uint32_t prefix = 0;
  std::uint32_t prefix_mask = 0;
  std::size_t remaining = position;
  selection result;
  const unsigned grid = grid_for(b, n);
  for (int pass = 0; pass < 3; ++pass) {
    const std::uint32_t bins = 1u << widths[pass];
    check(cudaMemsetAsync(histogram.data(), 0, bins * sizeof(unsigned long long), b.stream()), "clearing a histogram");
    radix_histogram_kernel<<<grid, block_threads, 0, b.stream()>>>(value, in, n, prefix, prefix_mask, shifts[pass], bins,
                                                                   histogram.data());
    check(cudaGetLastError(), "launching a histogram kernel");
    check(cudaMemcpyAsync(host.data(), histogram.data(), bins * sizeof(unsigned long long), cudaMemcpyDeviceToHost,
                          b.stream()),
          "copying a histogram to the host");
    b.synchronize();
    std::uint32_t chosen = 0;
    for (std::uint32_t bin = bins; bin-- > 0;) {
      if (remaining < host[bin]) {
        chosen = bin;
        break;
      }
      remaining -= host[bin];
      result.greater += host[bin];
    }
    prefix |= chosen << shifts[pass];
    prefix_mask |= (bins - 1) << shifts[pass];
  }
  result.threshold = alloy::detail::bits_float(prefix);
  return result;
}

// The two boundaries of a rank band, as the CPU backend's rank_boundary.
struct band_bounds {
  float threshold[2] = {0.0f, 0.0f};
  unsigned long long ties_before[2] = {0, 0};
  bool nothing[2] = {true, true};
  bool everything[2] = {false, false};
};

template <class Value>
__global__ void __launch_bounds__(block_threads)
    tie_count_kernel(Value value, device_inputs in, std::size_t n, band_bounds bounds, std::size_t segments,
                     unsigned long long* counts) {
  const std::size_t start = static_cast<std::size_t>(blockIdx.x) * segment_elements;
  unsigned ties[2] = {0, 0};
  for (std::size_t r = 0; r < segment_elements / block_threads; ++r) {
    const std::size_t i = start + r * block_threads + threadIdx.x;
    if (i >= n) break;
    const float m = alloy::detail::rank_magnitude(value(global_values{in, i}, i));
    ties[0] += m == bounds.threshold[0];
    ties[1] += m == bounds.threshold[1];
  }
  using reduce = cub::BlockReduce<unsigned, block_threads>;
  __shared__ typename reduce::TempStorage storage;
  const unsigned packed = reduce(storage).Sum(ties[0] | (ties[1] << 16));
  if (threadIdx.x == 0) {
    counts[blockIdx.x] = packed & 0xffffu;
    counts[segments + blockIdx.x] = packed >> 16;
  }
}

template <class Value>
__global__ void __launch_bounds__(block_threads)
    band_mask_kernel(Value value, device_inputs in, std::size_t n, band_bounds bounds, std::size_t segments,
                     const unsigned long long* ties_earlier, std::uint32_t* words, std::size_t word_count) {
  using scan = cub::BlockScan<unsigned, block_threads>;
  __shared__ typename scan::TempStorage storage;
  const std::size_t start = static_cast<std::size_t>(blockIdx.x) * segment_elements;
  unsigned long long seen[2] = {ties_earlier[blockIdx.x], ties_earlier[segments + blockIdx.x]};
  for (std::size_t r = 0; r < segment_elements / block_threads; ++r) {
    const std::size_t i = start + r * block_threads + threadIdx.x;
    const bool valid = i < n;
    const float m = valid ? alloy::detail::rank_magnitude(value(global_values{in, i}, i)) : 0.0f;
    const unsigned equal[2] = {valid && m == bounds.threshold[0] ? 1u : 0u, valid && m == bounds.threshold[1] ? 1u : 0u};
    unsigned prefix = 0;
    unsigned total = 0;
    scan(storage).ExclusiveSum(equal[0] | (equal[1] << 16), prefix, total);
    bool before[2];
    for (int k = 0; k < 2; ++k) {
      const unsigned earlier = k == 0 ? (prefix & 0xffffu) : (prefix >> 16);
      if (bounds.nothing[k]) {
        before[k] = false;
      } else if (bounds.everything[k] || m > bounds.threshold[k]) {
        before[k] = true;
      } else if (equal[k] != 0) {
        before[k] = seen[k] + earlier < bounds.ties_before[k];
      } else {
        before[k] = false;
      }
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, valid && before[1] && !before[0]);
    const std::size_t word = (start + r * block_threads + (threadIdx.x & ~31u)) / 32;
    if ((threadIdx.x & 31u) == 0 && word < word_count) words[word] = ballot;
    seen[0] += total & 0xffffu;
    seen[1] += total >> 16;
    __syncthreads();  // the scan's storage is reused
  }
}

}  // namespace detail

// The order statistic at `position` of the descending order of rank_magnitude(value(values,
// index)) (see alloy::nth_largest): the same value as on the CPU. Waits for the stream.
template <class Value>
float nth_largest(const backend& b, std::span<const const_tensor_view> inputs, std::size_t elements, const Value& value,
                  std::size_t position) {
  if (position >= elements) {
    alloy::fail(error_code::invalid_argument, "order statistic ", position, " of ", elements, " elements");
  }
  alloy::detail::check_inputs(inputs, elements);
  return detail::select_descending(b, detail::stage_inputs(b, inputs), elements, value, position).threshold;
}

// The order statistics at several positions (see alloy::nth_largest_each), one selection each.
template <class Value>
std::vector<float> nth_largest_each(const backend& b, std::span<const const_tensor_view> inputs, std::size_t elements,
                                   const Value& value, std::span<const std::size_t> positions) {
  std::vector<float> thresholds;
  for (const std::size_t position : positions) thresholds.push_back(nth_largest(b, inputs, elements, value, position));
  return thresholds;
}

// Keeps the elements whose rank position lies in [first, last) of the order of
// rank_magnitude(value(values, index)) descending, equal magnitudes by index (as the CPU backend).
template <class Value>
device_mask rank_band_mask(const backend& b, std::span<const const_tensor_view> inputs, std::size_t elements,
                           const Value& value, std::size_t first, std::size_t last) {
  last = std::min(last, elements);
  first = std::min(first, last);
  device_mask mask(elements, b.stream());
  const std::size_t bytes = mask.word_count() * 8;
  if ((first == 0 && last == elements) || first == last) {
    if (bytes != 0) {
      check(cudaMemsetAsync(mask.mutable_words(), first == last ? 0 : 0xff, bytes, b.stream()), "filling a mask");
    }
    return mask;
  }
  alloy::detail::check_inputs(inputs, elements);
  const detail::device_inputs staged = detail::stage_inputs(b, inputs);
  detail::band_bounds bounds;
  const std::size_t positions[2] = {first, last};
  for (int k = 0; k < 2; ++k) {
    bounds.nothing[k] = positions[k] == 0;
    bounds.everything[k] = positions[k] >= elements;
    if (bounds.nothing[k] || bounds.everything[k]) continue;
    const detail::selection s = detail::select_descending(b, staged, elements, value, positions[k] - 1);
    bounds.threshold[k] = s.threshold;
    bounds.ties_before[k] = positions[k] - s.greater;
  }
  const std::size_t segments = (elements + detail::segment_elements - 1) / detail::segment_elements;
  device_buffer<unsigned long long> counts(2 * segments, b.stream());
  device_buffer<unsigned long long> earlier(2 * segments, b.stream());
  detail::tie_count_kernel<<<static_cast<unsigned>(segments), detail::block_threads, 0, b.stream()>>>(
      value, staged, elements, bounds, segments, counts.data());
  check(cudaGetLastError(), "launching the tie count kernel");
  std::size_t scratch_bytes = 0;
  check(cub::DeviceScan::ExclusiveSum(nullptr, scratch_bytes, counts.data(), earlier.data(), segments, b.stream()),
        "sizing a scan");
  device_buffer<std::byte> scratch(scratch_bytes, b.stream());
  for (std::size_t k = 0; k < 2; ++k) {
    check(cub::DeviceScan::ExclusiveSum(scratch.data(), scratch_bytes, counts.data() + k * segments,
                                        earlier.data() + k * segments, segments, b.stream()),
          "scanning tie counts");
  }
  detail::band_mask_kernel<<<static_cast<unsigned>(segments), detail::block_threads, 0, b.stream()>>>(
      value, staged, elements, bounds, segments, earlier.data(), reinterpret_cast<std::uint32_t*>(mask.mutable_words()),
      mask.word_count() * 2);
  check(cudaGetLastError(), "launching the mask kernel");
  return mask;
}

namespace detail {

template <class Value>
__global__ void __launch_bounds__(block_threads)
    sampling_keys_kernel(Value value, device_inputs in, std::size_t n, std::size_t row_length, float* keys,
                         std::uint32_t* indices, long long* offsets, std::size_t rows) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    keys[i] = alloy::detail::rank_magnitude(value(global_values{in, i}, i));
    indices[i] = static_cast<std::uint32_t>(i);
  }
  for (std::size_t r = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; r <= rows; r += stride) {
    offsets[r] = static_cast<long long>(r * row_length);
  }
}

__global__ void __launch_bounds__(block_threads)
    sampling_mask_kernel(const std::uint32_t* sorted, std::size_t n, std::size_t row_length, std::uint64_t stream_key,
                         double lowest, double spread, unsigned int* words) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t p = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < n; p += stride) {
    const std::size_t index = sorted[p];
    const float probability = alloy::detail::rank_keep_probability(p % row_length, row_length, lowest, spread);
    if (uniform01(stream_key, index) < probability) atomicOr(&words[index / 32], 1u << (index % 32));
  }
}

}  // namespace detail

// DELLA's rank sampling (see alloy::rank_sampling_mask): a stable segmented sort per row, then
// one keep draw per element from the same counter-based stream as the CPU backend.
template <class Value>
device_mask rank_sampling_mask(const backend& b, std::span<const const_tensor_view> inputs, std::size_t rows,
                               std::size_t row_length, const Value& value, std::uint64_t stream_key, double lowest,
                               double spread) {
  const std::size_t n = rows * row_length;
  alloy::detail::check_inputs(inputs, n);
  device_mask mask(n, b.stream());
  if (mask.word_count() != 0) check(cudaMemsetAsync(mask.mutable_words(), 0, mask.word_count() * 8, b.stream()), "clearing a mask");
  if (n == 0) return mask;
  if (n > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    alloy::fail(error_code::limit, "rank sampling on the GPU handles tensors of up to 2^31 - 1 elements, not ", n);
  }
  const detail::device_inputs staged = detail::stage_inputs(b, inputs);
  device_buffer<float> keys(n, b.stream()), sorted_keys(n, b.stream());
  device_buffer<std::uint32_t> indices(n, b.stream()), sorted_indices(n, b.stream());
  device_buffer<long long> offsets(rows + 1, b.stream());
  detail::sampling_keys_kernel<<<detail::grid_for(b, n), detail::block_threads, 0, b.stream()>>>(
      value, staged, n, row_length, keys.data(), indices.data(), offsets.data(), rows);
  check(cudaGetLastError(), "launching the sampling key kernel");
  std::size_t scratch_bytes = 0;
  const auto sort = [&](void* scratch) {
    return cub::DeviceSegmentedSort::StableSortPairs(scratch, scratch_bytes, keys.data(), sorted_keys.data(),
                                                     indices.data(), sorted_indices.data(), static_cast<long long>(n),
                                                     static_cast<long long>(rows), offsets.data(), offsets.data() + 1,
                                                     b.stream());
  };
  check(sort(nullptr), "sizing a segmented sort");
  device_buffer<std::byte> scratch(scratch_bytes, b.stream());
  check(sort(scratch.data()), "sorting rows by magnitude");
  detail::sampling_mask_kernel<<<detail::grid_for(b, n), detail::block_threads, 0, b.stream()>>>(
      sorted_indices.data(), n, row_length, stream_key, lowest, spread, reinterpret_cast<unsigned int*>(mask.mutable_words()));
  check(cudaGetLastError(), "launching the sampling mask kernel");
  return mask;
}

}  // namespace alloy::cuda
