#include "inference/pipeline_forward.h"

#include <cstring>
#include <map>

#include "parallel/schedule.h"

namespace glmrt {

namespace {
// Row b of a batch as a batch of one row.
Batch row_of(const Batch& b, int64_t r) {
  const int64_t s = b.seq;
  Batch out{1, s, b.tokens.slice_rows(r * s, (r + 1) * s), b.position_ids.slice_rows(r * s, (r + 1) * s),
            b.mask_spans.slice_rows(r * s, (r + 1) * s)};
  return out;
}

}  // namespace

void run_forward_only(GlmModel& model, ProcessGroups& g, int micro_batches,
                      const std::function<int64_t(int)>& tokens,
                      const std::function<Tensor(int, const Tensor&)>& forward) {
  if (micro_batches == 0) return;
  const int stage = g.topo.pp_rank();
  std::map<int, Tensor> inputs, outputs;
  for (const PipeInstruction& in : forward_only_schedule(g.topo.layout().pipeline, stage, micro_batches)) {
    const int j = in.micro_batch;
    switch (in.op) {
      case PipeOp::RecvActivation:
        inputs[j] = Tensor::empty({tokens(j), model.config().hidden_size}, model.dtype(), model.device());
        g.pp->recv(inputs[j], stage - 1);
        break;
      case PipeOp::Forward: {
        Tensor out = forward(j, inputs[j]);
        inputs.erase(j);
        if (!model.shard().last_stage) outputs[j] = std::move(out);
        break;
      }
      case PipeOp::SendActivation:
        g.pp->send(outputs[j], stage + 1);
        outputs.erase(j);
        break;
      default:
        GLMRT_CHECK(false, "forward-only pipeline: unexpected ", pipe_op_name(in.op));
    }
  }
  g.pp->wait_sends();
}

Tensor gather_vocab_logits(const Tensor& local_logits, Communicator& tp, int tp_size) {
  Tensor local = local_logits.to(Device::cpu());
  if (local.dtype() != DType::F32) local = local.to(DType::F32);
  if (tp_size == 1) return local;
  const int64_t rows = local.rows(), vl = local.cols();
  Tensor gathered = Tensor::empty({tp_size * rows, vl}, DType::F32);
  tp.all_gather(local.view({rows, vl}), gathered);
  Tensor out = Tensor::empty({rows, tp_size * vl}, DType::F32);
  const float* src = gathered.data_as<float>();
  float* dst = out.data_as<float>();
  for (int64_t r = 0; r < tp_size; ++r)
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(dst + (i * tp_size + r) * vl, src + (r * rows + i) * vl, static_cast<size_t>(vl) * 4);
  return out;
}

Tensor pipeline_forward(GlmModel& model, ProcessGroups& g, const Batch& batch) {
  const Topology& topo = g.topo;
  const Layout& L = topo.layout();
  const GlmConfig& c = model.config();
  const int64_t B = batch.batch, S = batch.seq, vl = c.vocab_size / L.tensor;
  // This replica's rows: b ≡ dp (mod D).
  std::vector<int64_t> rows;
  for (int64_t b = topo.dp_rank(); b < B; b += L.data) rows.push_back(b);
  const int m = static_cast<int>(rows.size());
  std::vector<Tensor> my_logits(rows.size());
  run_forward_only(model, g, m, [&](int) { return S; }, [&](int j, const Tensor& input) {
    Tensor out = model.forward_stage(row_of(batch, rows[static_cast<size_t>(j)]), input);
    if (model.shard().last_stage)
      my_logits[static_cast<size_t>(j)] = gather_vocab_logits(out.view({S, vl}), *g.tp, L.tensor);
    return out;
  });
  // Tensor-parallel rank 0 of each last stage sends its rows to world rank 0.
  const bool sender = model.shard().last_stage && topo.tp_rank() == 0;
  if (sender && topo.rank() != 0)
    for (const Tensor& t : my_logits) g.world->send(t, 0);
  Tensor result;
  if (topo.rank() == 0) {
    result = Tensor::empty({B, S, c.vocab_size}, DType::F32);
    for (int64_t b = 0; b < B; ++b) {
      const int owner = topo.rank_of({0, static_cast<int>(b % L.data), L.pipeline - 1});
      Tensor row = result.slice_rows(b, b + 1).view({S, c.vocab_size});
      if (owner == 0) row.copy_from(my_logits[static_cast<size_t>(b / L.data)]);
      else g.world->recv(row, owner);
    }
  }
  g.world->wait_sends();
  return result;
}

}  // namespace glmrt
