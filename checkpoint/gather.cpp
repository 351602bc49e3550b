#include "checkpoint/gather.h"

namespace glmrt {

NamedTensors gather_full_weights(const GlmParams& local, const GlmConfig& config,
                                 ProcessGroups& g, const std::vector<int64_t>& stage_layers) {
  const Topology& topo = g.topo;
  const Layout& layout = topo.layout();
  const bool root = topo.rank() == 0;
  auto stage_of = [&](const std::string& name) {
    const std::string prefix = "transformer.layers.";
    if (name.rfind(prefix, 0) != 0)
      return name.find("final_layernorm") != std::string::npos ? layout.pipeline - 1 : 0;
    const int64_t layer = std::stoll(name.substr(prefix.size()));
    int64_t first = 0;
    for (int s = 0; s < layout.pipeline; ++s) {
      first += stage_layers[static_cast<size_t>(s)];
      if (layer < first) return s;
    }
    return layout.pipeline - 1;
  };
  NamedTensors out;
  for (const ParamSpec& spec : glm_param_specs(config)) {
    const int stage = stage_of(spec.name);
    // Owners: data-parallel rank 0 of every tensor-parallel rank of that stage.
    if (topo.pp_rank() == stage && topo.dp_rank() == 0 && !root) {
      const Tensor* t = local.find(spec.name);
      GLMRT_CHECK(t != nullptr, "gather_full_weights: rank ", topo.rank(), " lacks ", spec.name);
      Tensor host = t->device().is_cpu() ? *t : t->to(Device::cpu());
      g.world->send(host.dtype() == DType::F32 ? host.clone() : host.to(DType::F32), 0);
    }
    if (!root) continue;
    std::vector<Tensor> pieces;
    for (int tp = 0; tp < layout.tensor; ++tp) {
      const int owner = topo.rank_of({tp, 0, stage});
      if (owner == 0) {
        const Tensor* t = local.find(spec.name);
        GLMRT_CHECK(t != nullptr, "gather_full_weights: rank 0 lacks ", spec.name);
        Tensor host = t->device().is_cpu() ? *t : t->to(Device::cpu());
        pieces.push_back(host.dtype() == DType::F32 ? host.clone() : host.to(DType::F32));
      } else {
        Shape shape = spec.shape;
        if (layout.tensor > 1 && spec.rule != ShardRule::Replicated) {
          if (spec.rule == ShardRule::Columns) shape[1] /= layout.tensor;
          else shape[0] /= layout.tensor;
        }
        Tensor piece = Tensor::empty(shape, DType::F32);
        g.world->recv(piece, owner);
        pieces.push_back(piece);
      }
    }
    out.emplace_back(spec.name, unshard_tensor(pieces, spec.rule));
  }
  g.world->wait_sends();
  g.world->barrier();
  return out;
}

}  // namespace glmrt
