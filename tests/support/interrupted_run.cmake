# interrupted_run(LABEL NAME STOP [ARGS...]): runs ${PROGRAM} ${ARGS} --runs ${RUNS} --name NAME with
# ALLOY_CLIP_STOP_AFTER_TASKS=STOP, which must stop it with 75 and without results.json; sets
# `err` in the caller's scope to what it printed on stderr.
function(interrupted_run label name stop)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E env ALLOY_CLIP_STOP_AFTER_TASKS=${stop}
                          "${PROGRAM}" ${ARGS} --runs "${RUNS}" --name ${name} ${ARGN}
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(NOT rc EQUAL 75)
    message(FATAL_ERROR "${label}, interrupted after ${stop} tasks, should stop with 75, not ${rc}:\n${err}")
  endif()
  if(EXISTS "${RUNS}/${name}/results.json")
    message(FATAL_ERROR "${label}, interrupted, wrote results.json")
  endif()
  set(err "${err}" PARENT_SCOPE)
endfunction()
