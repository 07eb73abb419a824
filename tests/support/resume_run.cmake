# An interrupted continual-learning run resumes to the same result as an uninterrupted one.
#   cmake -DPROGRAM=clip_continual -DARGS="run;..." -DRUNS=dir -DSTOP_AFTER="n1;n2;..." -P resume_run.cmake
# The first run stops after n1 trained tasks; each resumed run after n2, ... more; the last resumed
# run finishes. Every resumed run must continue a partly done cell.
file(REMOVE_RECURSE "${RUNS}")
execute_process(COMMAND "${PROGRAM}" ${ARGS} --runs "${RUNS}" --name whole RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the uninterrupted run failed (${rc}):\n${err}")
endif()
set(resume "")
foreach(stop IN LISTS STOP_AFTER)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E env ALLOY_CLIP_STOP_AFTER_TASKS=${stop}
                          "${PROGRAM}" ${ARGS} --runs "${RUNS}" --name resumed ${resume}
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 75)
    message(FATAL_ERROR "the run interrupted after ${stop} tasks should stop with 75, not ${rc}:\n${err}")
  endif()
  if(EXISTS "${RUNS}/resumed/results.json")
    message(FATAL_ERROR "the interrupted run wrote results.json")
  endif()
  if(resume AND NOT err MATCHES "resuming after task")
    message(FATAL_ERROR "the resumed run did not resume a partly done cell:\n${err}")
  endif()
  set(resume --resume)
endforeach()
execute_process(COMMAND "${PROGRAM}" ${ARGS} --runs "${RUNS}" --name resumed --resume RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the resumed run failed (${rc}):\n${err}")
endif()
if(NOT err MATCHES "resuming after task")
  message(FATAL_ERROR "the resumed run did not resume a partly done cell:\n${err}")
endif()
message(STATUS "interrupted after ${STOP_AFTER} tasks and resumed")
