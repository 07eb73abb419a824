# Warnings for alloy's own targets (tests, tools, examples, benchmarks). The INTERFACE library
# itself carries no warning flags: they are the consumer's choice.
function(alloy_set_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE
      -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Wsign-conversion -Wold-style-cast
      -Wnon-virtual-dtor -Woverloaded-virtual -Wdouble-promotion
      -Wimplicit-fallthrough -Wcast-qual -Wundef)
    if(ALLOY_WARNINGS_AS_ERRORS)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  elseif(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive-)
    if(ALLOY_WARNINGS_AS_ERRORS)
      target_compile_options(${target} PRIVATE /WX)
    endif()
  endif()
endfunction()

# nvcc options for alloy's CUDA targets. C++20 is asked for directly (CMake 3.25 knows no CUDA 20
# dialect flag for nvcc). -fmad=false keeps f32 arithmetic free of fused multiply-adds, as on the
# CPU, so that the GPU's results equal the CPU backend's bit for bit. Diagnostic 186 ("pointless
# comparison of unsigned integer with zero") fires in loops instantiated with fixed sizes.
function(alloy_set_cuda_options target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 -fmad=false -diag-suppress=186>)
  if(ALLOY_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
endfunction()
