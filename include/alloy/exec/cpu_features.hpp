#pragma once
// Which vector instructions the CPU backend's dispatched loops use, chosen once at first use from
// what the running CPU has (a header-only library cannot assume -march): the build's baseline
// (SSE2 on x86-64), AVX2 with F16C, or AVX-512 (F, BW, DQ and VL: every AVX-512 CPU since
// Skylake-SP). Every level computes the same bits;
// the tests run each level the machine has and compare.
//
// ALLOY_SIMD=baseline|avx2|avx512 (or sse2 for baseline) caps the level for a process, and
// set_simd_level caps it for a program (a test, a benchmark row); neither raises it above what
// the CPU has. Compilers without x86 target attributes (and CUDA's host passes) get the baseline.

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "alloy/core/error.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define ALLOY_X86_DISPATCH 1
#include <cpuid.h>
#else
#define ALLOY_X86_DISPATCH 0
#endif

#if ALLOY_X86_DISPATCH
// The instructions of each level, for functions compiled for it. AVX-512 implies FMA; alloy's
// arithmetic never fuses (the same bits at every level, as on the GPU with -fmad=false): the CMake
// target compiles with -ffp-contract=off, and GCC's dispatched loops say so themselves, so that
// headers included without the target keep the guarantee (clang needs the flag).
#define ALLOY_TARGET_AVX2 __attribute__((target("avx2,f16c")))
#define ALLOY_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,f16c")))
#if defined(__clang__)
#define ALLOY_DISPATCHED_LOOP __attribute__((flatten))
#else
#define ALLOY_DISPATCHED_LOOP __attribute__((flatten, optimize("fp-contract=off")))
#endif
#endif

namespace alloy {

enum class simd_level : std::uint8_t { baseline = 0, avx2 = 1, avx512 = 2 };

inline const char* to_string(simd_level level) noexcept {
  switch (level) {
    case simd_level::baseline: return "baseline";
    case simd_level::avx2: return "avx2";
    case simd_level::avx512: return "avx512";
  }
  return "baseline";
}

// The widest level the running CPU (and its OS) supports.
inline simd_level detected_simd_level() noexcept {
#if ALLOY_X86_DISPATCH
  static const simd_level detected = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl")) {
      return simd_level::avx512;
    }
    // F16C from cpuid leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not know it. AVX2's
    // check covers the OS's saving of the vector state, which F16C needs too.
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & (1u << 29)) != 0;
    if (__builtin_cpu_supports("avx2") && f16c) return simd_level::avx2;
    return simd_level::baseline;
  }();
  return detected;
#else
  return simd_level::baseline;
#endif
}

namespace detail {

inline simd_level parse_simd_level(std::string_view text) {
  if (text == "baseline" || text == "sse2") return simd_level::baseline;
  if (text == "avx2") return simd_level::avx2;
  if (text == "avx512") return simd_level::avx512;
  fail(error_code::invalid_argument, "ALLOY_SIMD is ", quoted{text}, "; expected baseline (or sse2), avx2 or avx512");
}

// The cap: ALLOY_SIMD's level, else the widest; set_simd_level replaces it.
inline std::atomic<std::uint8_t>& simd_cap() {
  static std::atomic<std::uint8_t> cap = [] {
    const char* text = std::getenv("ALLOY_SIMD");  // NOLINT(concurrency-mt-unsafe): read once, before any thread asks
    const simd_level level = text != nullptr && *text != '\0' ? parse_simd_level(text) : simd_level::avx512;
    return static_cast<std::uint8_t>(level);
  }();
  return cap;
}

}  // namespace detail

// The level the dispatched loops use now: the CPU's, capped by ALLOY_SIMD or set_simd_level.
inline simd_level active_simd_level() {
  const auto cap = detail::simd_cap().load(std::memory_order_relaxed);
  const auto detected = static_cast<std::uint8_t>(detected_simd_level());
  return static_cast<simd_level>(cap < detected ? cap : detected);
}

// Caps the level for every later call (any thread); returns the previous cap.
inline simd_level set_simd_level(simd_level cap) {
  return static_cast<simd_level>(detail::simd_cap().exchange(static_cast<std::uint8_t>(cap), std::memory_order_relaxed));
}

namespace detail {

#if ALLOY_X86_DISPATCH
// body() with every call in it inlined (flatten) into a function compiled for the level, so that
// the loops of a kernel, written once in portable C++, vectorise for that level's registers.
template <class Body>
ALLOY_TARGET_AVX2 ALLOY_DISPATCHED_LOOP void run_compiled_for_avx2(const Body& body) {
  body();
}
template <class Body>
ALLOY_TARGET_AVX512 ALLOY_DISPATCHED_LOOP void run_compiled_for_avx512(const Body& body) {
  body();
}
#endif

// Runs body() compiled for the active level. For loops over a block (a few hundred elements),
// not per element: the choice costs a load and a branch.
template <class Body>
void at_active_simd_level(const Body& body) {
#if ALLOY_X86_DISPATCH
  switch (active_simd_level()) {
    case simd_level::avx512: return run_compiled_for_avx512(body);
    case simd_level::avx2: return run_compiled_for_avx2(body);
    case simd_level::baseline: break;
  }
#endif
  body();
}

}  // namespace detail

}  // namespace alloy
