#pragma once
// Element types as they appear in checkpoint files. Every dtype here can be read, viewed and
// copied; the floating types f32, f16 and bf16 can also be merged (computed in f32).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string_view>
#include <type_traits>

#include "alloy/core/config.hpp"
#include "alloy/core/half.hpp"

namespace alloy {

enum class dtype : std::uint8_t {
  f64,
  f32,
  f16,
  bf16,
  f8_e4m3,
  f8_e5m2,
  i64,
  i32,
  i16,
  i8,
  u64,
  u32,
  u16,
  u8,
  boolean,
};

inline constexpr dtype all_dtypes[] = {
    dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::f8_e4m3,
    dtype::f8_e5m2, dtype::i64, dtype::i32, dtype::i16, dtype::i8,
    dtype::u64, dtype::u32, dtype::u16, dtype::u8, dtype::boolean,
};

// Bytes per element (ALLOY_HD: tensor views' byte_size runs on the device too).
ALLOY_HD constexpr std::size_t size_of(dtype type) noexcept {
  switch (type) {
    case dtype::f64:
    case dtype::i64:
    case dtype::u64: return 8;
    case dtype::f32:
    case dtype::i32:
    case dtype::u32: return 4;
    case dtype::f16:
    case dtype::bf16:
    case dtype::i16:
    case dtype::u16: return 2;
    case dtype::f8_e4m3:
    case dtype::f8_e5m2:
    case dtype::i8:
    case dtype::u8:
    case dtype::boolean: return 1;
  }
  return 0;
}

// The name used by the safetensors format ("F32", "BF16", ...).
constexpr std::string_view name(dtype type) noexcept {
  switch (type) {
    case dtype::f64: return "F64";
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::f8_e4m3: return "F8_E4M3";
    case dtype::f8_e5m2: return "F8_E5M2";
    case dtype::i64: return "I64";
    case dtype::i32: return "I32";
    case dtype::i16: return "I16";
    case dtype::i8: return "I8";
    case dtype::u64: return "U64";
    case dtype::u32: return "U32";
    case dtype::u16: return "U16";
    case dtype::u8: return "U8";
    case dtype::boolean: return "BOOL";
  }
  return "?";
}

// The dtype whose safetensors name is exactly `text` ("F32", "BF16", ...); nothing else matches.
constexpr std::optional<dtype> dtype_from_name(std::string_view text) noexcept {
  for (dtype type : all_dtypes) {
    if (text == name(type)) return type;
  }
  return std::nullopt;
}

// A dtype as users write it in configs: a safetensors name or a common spelling
// (float32, float16, bfloat16, float64, f32, f16, bf16, half, float, double).
constexpr std::optional<dtype> parse_dtype(std::string_view text) noexcept {
  if (auto exact = dtype_from_name(text)) return exact;
  if (text == "float32" || text == "f32" || text == "float") return dtype::f32;
  if (text == "float16" || text == "f16" || text == "half") return dtype::f16;
  if (text == "bfloat16" || text == "bf16") return dtype::bf16;
  if (text == "float64" || text == "f64" || text == "double") return dtype::f64;
  return std::nullopt;
}

constexpr bool is_floating(dtype type) noexcept {
  return type == dtype::f64 || type == dtype::f32 || type == dtype::f16 || type == dtype::bf16 ||
         type == dtype::f8_e4m3 || type == dtype::f8_e5m2;
}

// The dtypes that merge policies read and write (accumulating in f32).
constexpr bool is_mergeable(dtype type) noexcept {
  return type == dtype::f32 || type == dtype::f16 || type == dtype::bf16;
}

inline std::ostream& operator<<(std::ostream& out, dtype type) { return out << name(type); }

// The dtype that stores elements of C++ type T; unspecialised for types with no dtype.
template <class T>
struct dtype_of;
template <> struct dtype_of<double> : std::integral_constant<dtype, dtype::f64> {};
template <> struct dtype_of<float> : std::integral_constant<dtype, dtype::f32> {};
template <> struct dtype_of<float16> : std::integral_constant<dtype, dtype::f16> {};
template <> struct dtype_of<bfloat16> : std::integral_constant<dtype, dtype::bf16> {};
template <> struct dtype_of<std::int64_t> : std::integral_constant<dtype, dtype::i64> {};
template <> struct dtype_of<std::int32_t> : std::integral_constant<dtype, dtype::i32> {};
template <> struct dtype_of<std::int16_t> : std::integral_constant<dtype, dtype::i16> {};
template <> struct dtype_of<std::int8_t> : std::integral_constant<dtype, dtype::i8> {};
template <> struct dtype_of<std::uint64_t> : std::integral_constant<dtype, dtype::u64> {};
template <> struct dtype_of<std::uint32_t> : std::integral_constant<dtype, dtype::u32> {};
template <> struct dtype_of<std::uint16_t> : std::integral_constant<dtype, dtype::u16> {};
template <> struct dtype_of<std::uint8_t> : std::integral_constant<dtype, dtype::u8> {};
template <> struct dtype_of<bool> : std::integral_constant<dtype, dtype::boolean> {};

template <class T>
inline constexpr dtype dtype_of_v = dtype_of<std::remove_cv_t<T>>::value;

template <class T>
concept element_type = requires { dtype_of<std::remove_cv_t<T>>::value; };

}  // namespace alloy
