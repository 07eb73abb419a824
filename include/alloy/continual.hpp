#pragma once
// Continual learning by merging: the continual merger (one global model, a task copy per task,
// merged back by a running mean, a fixed weight or any merge policy), used with alloy/align.hpp.

#include "alloy/continual/continual_merger.hpp"
