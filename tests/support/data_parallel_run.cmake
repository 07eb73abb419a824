# Data-parallel training gives one process's result, and an interrupted run resumes with another
# number of processes.
#   cmake -DPROGRAM=clip_continual -DARGS="run;..." -DRUNS=dir -P data_parallel_run.cmake
# RUNS/single: one process. RUNS/parallel: two processes (`--nproc 2`, Gloo over loopback), stopped
# after 7 trained tasks, resumed by one process and stopped after 6 more, finished by two. The
# accuracies are compared afterwards (check_continual_results.py --tolerance).
file(REMOVE_RECURSE "${RUNS}")
execute_process(COMMAND "${PROGRAM}" ${ARGS} --runs "${RUNS}" --name single RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the one-process run failed (${rc}):\n${err}")
endif()

include("${CMAKE_CURRENT_LIST_DIR}/interrupted_run.cmake")
interrupted_run("two processes" parallel 7 --nproc 2)
interrupted_run("one process resuming two's run" parallel 6 --resume)
if(NOT err MATCHES "resuming after task")
  message(FATAL_ERROR "one process did not resume the cell two processes left:\n${err}")
endif()
execute_process(COMMAND "${PROGRAM}" ${ARGS} --runs "${RUNS}" --name parallel --resume --nproc 2 RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "two processes resuming one's run failed (${rc}):\n${err}")
endif()
if(NOT err MATCHES "resuming after task")
  message(FATAL_ERROR "two processes did not resume the cell one process left:\n${err}")
endif()
message(STATUS "one process, and two interrupted and resumed with 1 and 2 processes")
