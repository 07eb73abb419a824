#pragma once
// The CPU execution backend: OpenMP threads over fixed-size chunks of a tensor.
//
// Chunks have the same boundaries whatever the thread count, and every reduction combines its
// per-chunk partial results in chunk order, so a result is bit-identical on 1 or 64 threads.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace alloy {

class bit_mask;

// A backend is what policies are written against (as CUB's algorithms are against a stream): it
// runs the primitives of exec/ (elementwise, reduce_sums, reduce_rows, select_where,
// rank_band_mask, nth_largest, rank_sampling_mask), found by argument-dependent lookup, and names
// the type its masks have. The CUDA backend (adapters/cuda) is the other one.
struct cpu_backend {
  using mask_type = bit_mask;  // one bit per element, in host memory

  // Threads to use; 0 means OpenMP's default (OMP_NUM_THREADS, else every core).
  int threads = 0;

  // Elements per chunk: a multiple of 64, so that chunks own whole words of a bit mask, and large
  // enough that scheduling costs nothing next to the work.
  static constexpr std::size_t chunk_elements = std::size_t{1} << 16;

  [[nodiscard]] int thread_count() const noexcept {
#if defined(_OPENMP)
    return threads > 0 ? threads : omp_get_max_threads();
#else
    return 1;
#endif
  }

  [[nodiscard]] static std::size_t chunk_count(std::size_t elements) noexcept {
    return (elements + chunk_elements - 1) / chunk_elements;
  }
};

// The mask type a backend's selections return.
template <class Backend>
using mask_type_t = typename Backend::mask_type;

// Arrays a kernel reads besides its inputs (weights, per-model terms) made readable where the
// kernel runs: on the CPU they are read where they are; the CUDA backend copies them to the
// device, in stream order.
template <class T>
[[nodiscard]] const T* stage_arguments(const cpu_backend&, std::span<const T> values) noexcept {
  return values.data();
}

namespace detail {
// An exception must not leave an OpenMP region (that terminates the program): the first one
// thrown by any iteration is kept and rethrown after the loop.
class first_exception {
 public:
  template <class Body>
  void run(Body&& body) noexcept {
    try {
      body();
    } catch (...) {
#if defined(_OPENMP)
#pragma omp critical(alloy_first_exception)
#endif
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::exception_ptr error_;
};
}  // namespace detail

// The index of the thread running the caller among the threads of the enclosing parallel loop
// (0 outside one): below backend.thread_count() inside for_each_chunk and for_each_index, so that
// a loop may give each thread scratch of its own (for results that do not depend on which thread
// did what, as integer counts).
[[nodiscard]] inline std::size_t worker_index() noexcept {
#if defined(_OPENMP)
  return static_cast<std::size_t>(omp_get_thread_num());
#else
  return 0;
#endif
}

// Calls body(chunk_index, begin, end) for every chunk of [0, elements), in parallel. An exception
// from any chunk is rethrown once all chunks have finished.
template <class Body>
void for_each_chunk(const cpu_backend& backend, std::size_t elements, Body&& body) {
  const auto chunks = static_cast<std::int64_t>(cpu_backend::chunk_count(elements));
  if (chunks == 0) return;
  detail::first_exception error;
#if defined(_OPENMP)
  const int threads = static_cast<int>(std::min<std::int64_t>(backend.thread_count(), chunks));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#else
  (void)backend;
#endif
  for (std::int64_t chunk = 0; chunk < chunks; ++chunk) {
    const std::size_t begin = static_cast<std::size_t>(chunk) * cpu_backend::chunk_elements;
    const std::size_t end = std::min(elements, begin + cpu_backend::chunk_elements);
    error.run([&] { body(static_cast<std::size_t>(chunk), begin, end); });
  }
  error.rethrow();
}

// Calls body(index) for every index in [0, count), in parallel (rows of a matrix, models, ...).
template <class Body>
void for_each_index(const cpu_backend& backend, std::size_t count, Body&& body) {
  const auto total = static_cast<std::int64_t>(count);
  detail::first_exception error;
#if defined(_OPENMP)
  const int threads = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(backend.thread_count(), total)));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#else
  (void)backend;
#endif
  for (std::int64_t index = 0; index < total; ++index) error.run([&] { body(static_cast<std::size_t>(index)); });
  error.rethrow();
}

}  // namespace alloy
