#pragma once
// `clip_continual run --nproc N`: N copies of this program as the ranks of one data-parallel run on
// this machine, started as torchrun --standalone starts them. This process is the launcher: it
// serves the rendezvous TCPStore on a free loopback port (the "agent store", so no rank has to)
// and gives each copy the standard environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
// MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE=True), so that a rank reads what it would under
// torchrun. When one rank fails, the others are stopped (a rank left alone would wait for the
// failed one until the collectives' timeout) and its exit status is the launcher's.

#include <torch/torch.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

#include "alloy/core/error.hpp"

extern char** environ;

namespace alloy_clip {

// The exit status with which a run stops at ALLOY_CLIP_STOP_AFTER_TASKS (a checkpoint, not a failure).
inline constexpr int interrupted_exit_status = 75;

// Runs argv (this program's own arguments) as ranks 0..processes-1; returns the run's exit status.
// Each rank gets hardware threads / processes intra-op threads (OMP_NUM_THREADS) unless the
// caller's environment sets OMP_NUM_THREADS or `threads_given` (the ranks then apply --threads).
inline int launch_local_ranks([[maybe_unused]] char** argv, [[maybe_unused]] int processes, [[maybe_unused]] bool threads_given) {
#ifndef USE_C10D_GLOO
  alloy::fail(alloy::error_code::invalid_argument, "--nproc ", processes,
              ": this clip_continual was built without c10d's Gloo (the alloy::torch_distributed target; Debian: libgloo-dev)");
#else
  c10d::TCPStoreOptions options;
  options.port = 0;  // (a free port, chosen by the system)
  options.isServer = true;
  options.numWorkers = processes;
  options.waitWorkers = false;
  const auto store = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", options);
  const std::string port = std::to_string(store->getPort());

  // The environment of every rank: this one's, less what the launcher sets.
  const std::vector<std::string> launcher_variables = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                                                       "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"};
  std::vector<std::string> shared;
  for (char** variable = environ; *variable != nullptr; ++variable) {
    const std::string entry = *variable;
    const std::string name = entry.substr(0, entry.find('='));
    bool replaced = false;
    for (const auto& own : launcher_variables) replaced = replaced || name == own;
    if (!replaced) shared.push_back(entry);
  }
  shared.push_back("WORLD_SIZE=" + std::to_string(processes));
  shared.push_back("LOCAL_WORLD_SIZE=" + std::to_string(processes));
  shared.push_back("MASTER_ADDR=127.0.0.1");
  shared.push_back("MASTER_PORT=" + port);
  shared.push_back("TORCHELASTIC_USE_AGENT_STORE=True");
  if (!threads_given && std::getenv("OMP_NUM_THREADS") == nullptr) {
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    shared.push_back("OMP_NUM_THREADS=" + std::to_string(std::max(1u, cores / static_cast<unsigned>(processes))));
  }

  std::vector<char*> arguments;
  for (char** argument = argv; *argument != nullptr; ++argument) arguments.push_back(*argument);
  arguments.push_back(nullptr);
  const pid_t launcher = getpid();
  std::vector<pid_t> ranks;
  const auto stop_all = [&] {
    for (const pid_t pid : ranks) {
      if (pid > 0) kill(pid, SIGTERM);  // (never kill(-1, ...): every process the user may signal)
    }
  };
  for (int rank = 0; rank < processes; ++rank) {
    std::vector<std::string> environment = shared;
    environment.push_back("RANK=" + std::to_string(rank));
    environment.push_back("LOCAL_RANK=" + std::to_string(rank));
    std::vector<char*> pointers;
    for (auto& entry : environment) pointers.push_back(entry.data());
    pointers.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) {
      const int error = errno;
      stop_all();
      alloy::fail(alloy::error_code::io, "--nproc: cannot start rank ", rank, ": ", std::strerror(error));
    }
    if (pid == 0) {
      // (Between fork and exec only async-signal-safe calls.) A rank dies with its launcher.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != launcher) _exit(1);
      execve("/proc/self/exe", arguments.data(), pointers.data());
      _exit(127);
    }
    ranks.push_back(pid);
  }

  int status_of_run = 0;
  bool failed = false;
  for (std::size_t running = ranks.size(); running > 0;) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int rank = -1;
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      if (ranks[i] == pid) rank = static_cast<int>(i);
    }
    if (rank < 0) continue;
    ranks[static_cast<std::size_t>(rank)] = -1;  // (not signalled again)
    --running;
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (failed) continue;
    if (code == interrupted_exit_status) {
      status_of_run = code;
    } else if (code != 0) {
      std::fprintf(stderr, "clip_continual: rank %d of %d %s %d; stopping the others\n", rank, processes,
                   WIFEXITED(status) ? "exited with status" : "was killed by signal", WIFEXITED(status) ? code : WTERMSIG(status));
      failed = true;
      status_of_run = code;
      stop_all();
    }
  }
  return status_of_run;
#endif
}

}  // namespace alloy_clip
