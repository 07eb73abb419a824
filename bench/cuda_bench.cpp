// GPU merges with alloy's CUDA backend, against two baselines measured in the same process:
//   - a device-to-device copy of the same kind of buffer (cudaMemcpyAsync): the bandwidth a
//     memory-bound kernel can hope for (counter of_copy = the merge's bytes per second over it);
//   - the same merge done with PyTorch CUDA eager operations the way mergekit writes it (stacked
//     task vectors, argsort for TIES's trim, torch.bernoulli for DARE), on the same device memory
//     (counter x_torch = PyTorch's time over alloy's), where LibTorch with CUDA is built in.
// Bytes moved by a merge: every input read once and the output written once.
// Times are CUDA event times on the stream that does the work (manual time).

#include <cuda_runtime_api.h>

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "alloy/core/half.hpp"
#include "alloy/cuda.hpp"
#include "alloy/merge/registry.hpp"

#if defined(ALLOY_BENCH_TORCH)
#include <c10/cuda/CUDAStream.h>
#include <torch/torch.h>
#endif

namespace {

using namespace alloy;

struct setup {
  std::string method;
  dtype type;
  std::size_t elements;
  std::size_t models;
  [[nodiscard]] std::string key() const {
    return method + "/" + std::string(name(type)) + "/" + std::to_string(elements >> 20) + "M/k" + std::to_string(models);
  }
};

// Base and models in device memory: base values in [-1, 1), each model the base plus a small
// task vector, as fine-tunes of one base are.
class device_inputs {
 public:
  device_inputs(const setup& s, cudaStream_t stream) : type_(s.type), elements_(s.elements) {
    const std::size_t width = size_of(s.type);
    std::vector<std::byte> host(s.elements * width);
    std::uint64_t state = 0x9e3779b97f4a7c15ull;
    const auto uniform = [&state] {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      return static_cast<float>(static_cast<double>(state >> 40) / 16777216.0 * 2.0 - 1.0);
    };
    std::vector<float> base(s.elements);
    for (auto& v : base) v = uniform();
    for (std::size_t b = 0; b <= s.models; ++b) {
      for (std::size_t i = 0; i < s.elements; ++i) {
        const float v = b == 0 ? base[i] : base[i] + 0.01f * uniform();
        if (s.type == dtype::f32) {
          std::memcpy(host.data() + i * 4, &v, 4);
        } else {
          const std::uint16_t bits = f32_to_bf16_bits(v);
          std::memcpy(host.data() + i * 2, &bits, 2);
        }
      }
      buffers_.emplace_back(host.size(), stream);
      cuda::check(cudaMemcpyAsync(buffers_.back().data(), host.data(), host.size(), cudaMemcpyHostToDevice, stream),
                  "uploading benchmark inputs");
      cuda::check(cudaStreamSynchronize(stream), "uploading benchmark inputs");
    }
    output_ = cuda::device_buffer<std::byte>(host.size(), stream);
  }
  [[nodiscard]] const_tensor_view input(std::size_t i) const {
    return const_tensor_view(buffers_[i].data(), type_, shape{static_cast<std::int64_t>(elements_)});
  }
  [[nodiscard]] tensor_view output() const {
    return tensor_view(output_.data(), type_, shape{static_cast<std::int64_t>(elements_)});
  }
  [[nodiscard]] std::size_t count() const { return buffers_.size(); }

 private:
  dtype type_;
  std::size_t elements_;
  std::vector<cuda::device_buffer<std::byte>> buffers_;
  cuda::device_buffer<std::byte> output_;
};

// One input set at a time lives on the device (the largest is several GB).
std::unique_ptr<device_inputs> current_inputs;
std::string current_key;

device_inputs& inputs_for(const setup& s, cudaStream_t stream) {
  const std::string key = std::string(name(s.type)) + std::to_string(s.elements) + "/" + std::to_string(s.models);
  if (key != current_key) {
    current_inputs.reset();
    cuda::check(cudaDeviceSynchronize(), "freeing benchmark inputs");
    current_inputs = std::make_unique<device_inputs>(s, stream);
    current_key = key;
  }
  return *current_inputs;
}

std::size_t bytes_moved(const setup& s) {
  const bool with_base = s.method != "linear";
  return (s.models + (with_base ? 1 : 0) + 1) * s.elements * size_of(s.type);
}

std::map<std::string, double> copy_bandwidth;  // bytes per second, by dtype and size
std::map<std::string, double> torch_seconds;   // mean iteration time, by setup

// Times `work` on `stream` with CUDA events, one iteration per benchmark iteration.
template <class Work>
void time_on_stream(benchmark::State& state, cudaStream_t stream, Work&& work) {
  cuda::event start(true), stop(true);
  work();  // warm-up (allocator pools, first-launch costs)
  cuda::check(cudaStreamSynchronize(stream), "warm-up");
  for (auto _ : state) {
    start.record(stream);
    work();
    stop.record(stream);
    stop.synchronize();
    state.SetIterationTime(static_cast<double>(stop.milliseconds_since(start)) / 1000.0);
  }
}

void copy_baseline(benchmark::State& state, setup s) {
  const cuda::backend gpu = cuda::backend::with_own_stream();
  const std::size_t bytes = s.elements * size_of(s.type);
  const cuda::device_buffer<std::byte> from(bytes, gpu.stream()), to(bytes, gpu.stream());
  cuda::check(cudaMemsetAsync(from.data(), 1, bytes, gpu.stream()), "filling");
  time_on_stream(state, gpu.stream(), [&] {
    cuda::check(cudaMemcpyAsync(to.data(), from.data(), bytes, cudaMemcpyDeviceToDevice, gpu.stream()), "copying");
  });
  state.SetBytesProcessed(state.iterations() * 2 * static_cast<std::int64_t>(bytes));
}

merge_policy policy_for(const std::string& method) {
  if (method == "linear") return linear_merge{};
  if (method == "magmax") return magmax_merge{};
  if (method == "ties") return task_vector_merge::ties();
  if (method == "dare_ties") return task_vector_merge::dare_ties();
  return task_vector_merge::task_arithmetic();
}

void alloy_merge(benchmark::State& state, setup s) {
  const cuda::backend gpu = cuda::backend::with_own_stream();
  device_inputs& data = inputs_for(s, gpu.stream());
  std::vector<const_tensor_view> models;
  for (std::size_t i = 1; i < data.count(); ++i) models.push_back(data.input(i));
  std::vector<model_parameters> parameters(s.models);
  for (std::size_t i = 0; i < s.models; ++i) {
    parameters[i].weight = 1.0 / static_cast<double>(s.models);
    parameters[i].density = 0.5;
  }
  const merge_policy policy = policy_for(s.method);
  const bool with_base = s.method != "linear";
  const merge_inputs in{"model.layers.0.mlp.up_proj.weight",
                        with_base ? std::optional<const_tensor_view>(data.input(0)) : std::nullopt, models, parameters};
  time_on_stream(state, gpu.stream(), [&] { cuda::merge_with(policy, gpu, in, data.output()); });
  const double bytes = static_cast<double>(bytes_moved(s));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(bytes));
  state.counters["of_copy"] = benchmark::Counter(bytes / copy_bandwidth[std::string(name(s.type))],
                                                 benchmark::Counter::kIsIterationInvariantRate);
  if (const auto t = torch_seconds.find(s.key()); t != torch_seconds.end()) {
    state.counters["x_torch"] =
        benchmark::Counter(t->second, benchmark::Counter::kIsIterationInvariantRate);
  }
}

#if defined(ALLOY_BENCH_TORCH)
// The merge as mergekit's Python code does it, on the same device memory (zero-copy), in the
// inputs' dtype.
torch::Tensor torch_merge(const setup& s, const std::vector<torch::Tensor>& tensors) {
  const auto& base = tensors[0];
  const std::vector<torch::Tensor> models(tensors.begin() + 1, tensors.end());
  auto weights = torch::full({static_cast<std::int64_t>(s.models), 1}, 1.0 / static_cast<double>(s.models),
                             base.options());
  if (s.method == "linear") {
    return ((weights * torch::stack(models)).sum(0) / weights.sum(0)).to(base.scalar_type());
  }
  std::vector<torch::Tensor> deltas;
  for (const auto& m : models) {
    auto tv = m - base;
    if (s.method == "ties") {
      const auto k = static_cast<std::int64_t>(0.5 * static_cast<double>(tv.numel()));
      auto mask = torch::zeros_like(tv);
      const auto top = torch::argsort(tv.abs().view(-1), /*dim=*/0, /*descending=*/true).slice(0, 0, k);
      mask.view(-1).index_put_({top}, 1);
      tv = tv * mask;
    } else if (s.method == "dare_ties") {
      const auto mask = torch::bernoulli(torch::full_like(tv, 0.5));
      tv = tv * mask / 0.5;
    }
    deltas.push_back(tv);
  }
  const auto stacked = torch::stack(deltas);
  if (s.method == "magmax") {
    const auto index = stacked.abs().argmax(0, /*keepdim=*/true);
    return base + stacked.gather(0, index).squeeze(0);
  }
  const auto weighted = stacked * weights;
  if (s.method == "task_arithmetic") return base + weighted.sum(0);
  // TIES's sign election and disjoint mean (mergekit's get_mask, method "sum").
  const auto sign = weighted.sign();
  const auto majority = (weighted.sum(0) >= 0).to(base.scalar_type()) * 2 - 1;
  const auto agree = sign == majority;
  const auto mixed = (weighted * agree).sum(0);
  auto divisor = (weights * agree).sum(0);
  divisor.masked_fill_(divisor == 0, 1);
  return base + mixed / divisor;
}

void torch_baseline(benchmark::State& state, setup s) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  device_inputs& data = inputs_for(s, stream);
  const auto options = torch::TensorOptions()
                           .device(torch::kCUDA)
                           .dtype(s.type == dtype::f32 ? torch::kFloat32 : torch::kBFloat16);
  std::vector<torch::Tensor> tensors;
  for (std::size_t i = 0; i < data.count(); ++i) {
    tensors.push_back(torch::from_blob(const_cast<std::byte*>(data.input(i).data()),
                                       {static_cast<std::int64_t>(s.elements)}, options));
  }
  torch::NoGradGuard no_grad;
  double total = 0;
  cuda::event start(true), stop(true);
  (void)torch_merge(s, tensors);
  for (auto _ : state) {
    start.record(stream);
    const auto merged = torch_merge(s, tensors);
    stop.record(stream);
    stop.synchronize();
    const double seconds = static_cast<double>(stop.milliseconds_since(start)) / 1000.0;
    total += seconds;
    state.SetIterationTime(seconds);
  }
  torch_seconds[s.key()] = total / static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(bytes_moved(s)));
}
#endif

// The copy bandwidth each dtype's merges are compared with: a 256 MiB device-to-device copy.
void measure_copy_bandwidth() {
  const cuda::backend gpu = cuda::backend::with_own_stream();
  const std::size_t bytes = std::size_t{256} << 20;
  const cuda::device_buffer<std::byte> from(bytes, gpu.stream()), to(bytes, gpu.stream());
  cuda::event start(true), stop(true);
  for (int warm = 0; warm < 3; ++warm) {
    cuda::check(cudaMemcpyAsync(to.data(), from.data(), bytes, cudaMemcpyDeviceToDevice, gpu.stream()), "copying");
  }
  start.record(gpu.stream());
  constexpr int repeats = 20;
  for (int r = 0; r < repeats; ++r) {
    cuda::check(cudaMemcpyAsync(to.data(), from.data(), bytes, cudaMemcpyDeviceToDevice, gpu.stream()), "copying");
  }
  stop.record(gpu.stream());
  stop.synchronize();
  const double seconds = static_cast<double>(stop.milliseconds_since(start)) / 1000.0 / repeats;
  const double bandwidth = 2.0 * static_cast<double>(bytes) / seconds;  // read + write
  copy_bandwidth["F32"] = bandwidth;
  copy_bandwidth["BF16"] = bandwidth;
  std::printf("device: %s; device-to-device copy of 256 MiB: %.0f GB/s (read + write)\n", cuda::device_name().c_str(),
              bandwidth / 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda::device_available()) {
    std::printf("cuda_bench: no CUDA device here; nothing measured\n");
    return 0;
  }
  measure_copy_bandwidth();
  for (const std::size_t elements : {std::size_t{16} << 20, std::size_t{64} << 20}) {
    for (const dtype type : {dtype::f32, dtype::bf16}) {
      const setup copy{"copy", type, elements, 0};
      benchmark::RegisterBenchmark(("copy/" + std::string(name(type)) + "/" + std::to_string(elements >> 20) + "M").c_str(),
                                   copy_baseline, copy)
          ->UseManualTime()
          ->Unit(benchmark::kMicrosecond);
      for (const std::size_t models : {std::size_t{2}, std::size_t{8}}) {
        for (const char* method : {"linear", "task_arithmetic", "magmax", "ties", "dare_ties"}) {
          const setup s{method, type, elements, models};
#if defined(ALLOY_BENCH_TORCH)
          benchmark::RegisterBenchmark(("torch/" + s.key()).c_str(), torch_baseline, s)
              ->UseManualTime()
              ->MinTime(0.3)
              ->Unit(benchmark::kMicrosecond);
#endif
          benchmark::RegisterBenchmark(("alloy/" + s.key()).c_str(), alloy_merge, s)
              ->UseManualTime()
              ->MinTime(0.3)
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  current_inputs.reset();
  return 0;
}
