#pragma once

#include "parallel/topology.h"

namespace glmrt::testing {
// The layout under test (--layout=t,p,d on the command line).
extern Layout g_layout;
}  // namespace glmrt::testing
