# Builds and runs tests/install/consumer against alloy, either installed (MODE=find_package) or
# as a subdirectory (MODE=add_subdirectory). Run with cmake -P; fails on the first error.
file(REMOVE_RECURSE "${WORK_DIR}")

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "command failed (${result}): ${ARGV}\n${out}\n${err}")
  endif()
endfunction()

set(consumer "${ALLOY_SOURCE_DIR}/tests/install/consumer")
if(MODE STREQUAL "find_package")
  run("${CMAKE_COMMAND}" --install "${ALLOY_BINARY_DIR}" --prefix "${WORK_DIR}/prefix")
  if(NOT EXISTS "${WORK_DIR}/prefix/share/cmake/alloy/alloyConfigVersion.cmake")
    message(FATAL_ERROR "alloyConfigVersion.cmake was not installed")
  endif()
  run("${CMAKE_COMMAND}" -S "${consumer}" -B "${WORK_DIR}/build"
      -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DREQUIRE_ADAPTERS=${REQUIRE_ADAPTERS})
else()
  run("${CMAKE_COMMAND}" -S "${consumer}" -B "${WORK_DIR}/build"
      -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DALLOY_AS_SUBDIRECTORY=ON
      -DALLOY_SOURCE_DIR=${ALLOY_SOURCE_DIR} -DALLOY_WITH_CUDA=OFF -DALLOY_WITH_TORCH=OFF
      -DREQUIRE_ADAPTERS=${REQUIRE_ADAPTERS})
endif()
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
if(REQUIRE_ADAPTERS)
  run("${WORK_DIR}/build/consumer_adapters")
endif()
file(REMOVE_RECURSE "${WORK_DIR}")
