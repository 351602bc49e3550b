#include "model/init.h"

#include <cmath>
#include <functional>
#include <string>

#include "kernels/philox.h"

namespace glmrt {

namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

void init_glm_params(GlmParams& params, const GlmConfig& c, uint64_t seed) {
  const double beta = 1.0 / std::sqrt(2.0 * static_cast<double>(c.num_layers));
  const double h = static_cast<double>(c.hidden_size), f = static_cast<double>(c.ffn_hidden_size);
  const int64_t d = c.head_dim();
  auto xavier = [](double fan_in, double fan_out, double gain) {
    return gain * std::sqrt(2.0 / (fan_in + fan_out));
  };
  // Streams are numbered by the parameter's place in the whole model, elements by their place in
  // the full tensor: every shard draws exactly the numbers of its piece.
  const std::vector<ParamSpec> all = glm_param_specs(c);
  const ModelShard& shard = params.shard();
  for (size_t local = 0; local < params.size(); ++local) {
    const std::string& local_name = params.specs()[local].name;
    size_t p = 0;
    while (all[p].name != local_name) ++p;
    const ParamSpec& spec = all[p];
    const std::string& name = spec.name;
    const int64_t n = shape_numel(spec.shape), cols = spec.shape.back();
    // std(element) for this parameter; 0 = constant `fill`.
    std::function<double(int64_t)> stddev = [](int64_t) { return 0.0; };
    double fill = 0.0;
    if (name == "transformer.word_embeddings.weight") {
      stddev = [](int64_t) { return 0.0052; };
    } else if (ends_with(name, "layernorm.weight")) {
      fill = 1.0;
    } else if (ends_with(name, "query_key_value.weight")) {
      const double s_qk = xavier(h, h, 1.0), s_v = xavier(h, h, beta);
      stddev = [=](int64_t i) { return (i / cols) % (3 * d) >= 2 * d ? s_v : s_qk; };
    } else if (ends_with(name, "attention.dense.weight")) {
      const double s = xavier(h, h, beta);
      stddev = [=](int64_t) { return s; };
    } else if (ends_with(name, "dense_h_to_4h.weight")) {
      const double s = xavier(h, f, beta);  // each GeGLU half is an [F, h] matrix
      stddev = [=](int64_t) { return s; };
    } else if (ends_with(name, "dense_4h_to_h.weight")) {
      const double s = xavier(f, h, beta);
      stddev = [=](int64_t) { return s; };
    }
    Tensor host = Tensor::empty(spec.shape, DType::F64);
    double* v = host.data_as<double>();
    // Counter-based draws: the values do not depend on the thread count.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const double s = stddev(i);
      v[i] = s == 0.0 ? fill : s * Philox::normal(seed, p, static_cast<uint64_t>(i));
    }
    Tensor& dst = params.tensor(local);
    dst.copy_from(shard_tensor(host, spec.rule, shard.tp_rank, shard.tp_size).to(dst.dtype()));
  }
}

}  // namespace glmrt
