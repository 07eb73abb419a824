#pragma once
// Alignment: PAM's periodic reset of sign conflicts with the global weights, and the
// differentiable alignment regularizers (L2 pull, sign agreement, cosine alignment).

#include "alloy/align/pam.hpp"
#include "alloy/align/regularizers.hpp"
