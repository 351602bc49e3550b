#include "data/sample_source.h"

#include "kernels/error.h"

namespace glmrt {

SampleList::SampleList(std::vector<Sample> samples) : samples_(std::move(samples)) {
  GLMRT_CHECK(!samples_.empty(), "SampleList: no samples");
}

}  // namespace glmrt
