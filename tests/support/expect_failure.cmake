# Runs COMMAND (a ;-list) and passes when it exits non-zero with stderr matching ERROR_REGEX and,
# when NO_OUTPUT names a path, that path does not exist afterwards.
#   cmake -DCOMMAND="prog;arg;..." -DERROR_REGEX="..." [-DNO_OUTPUT=path] -P expect_failure.cmake
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a failure, but the command succeeded:\n${out}${err}")
endif()
if(NOT err MATCHES "${ERROR_REGEX}")
  message(FATAL_ERROR "exit ${rc}, but stderr does not match '${ERROR_REGEX}':\n${err}")
endif()
if(DEFINED NO_OUTPUT AND EXISTS "${NO_OUTPUT}")
  message(FATAL_ERROR "the failed command left ${NO_OUTPUT} behind")
endif()
message(STATUS "failed as expected (exit ${rc}): ${err}")
