#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <map>

#include "kernels/ops.h"
#include "parallel/schedule.h"

namespace glmrt {

namespace {
int64_t dp_pad(const TrainerOptions& o) {
  return o.zero && o.groups ? static_cast<int64_t>(o.groups->topo.layout().data) * 64 : 1;
}
}  // namespace

Trainer::Trainer(GlmModel& model, const TrainConfig& train, const OptimizerConfig& optimizer,
                 std::shared_ptr<const SampleSource> samples, TrainerOptions options,
                 std::shared_ptr<const SampleSource> validation)
    : model_(model), train_(train), opt_(optimizer), samples_(std::move(samples)),
      validation_(std::move(validation)), options_(options),
      scaler_(train.loss_scale, train.precision == Precision::FP16) {
  if (ProcessGroups* g = options_.groups) {
    tp_rank_ = g->topo.tp_rank();
    dp_rank_ = g->topo.dp_rank();
    dp_size_ = g->topo.layout().data;
    stage_ = g->topo.pp_rank();
    stages_ = g->topo.layout().pipeline;
  }
  const int64_t unit = train_.micro_batch_size * dp_size_;
  auto multiple = [&](int64_t v, const char* key) {
    if (v % unit != 0)
      throw ConfigError("train." + std::string(key) + " " + std::to_string(v) +
                        " is not a multiple of micro_batch_size × data-parallel ranks (" +
                        std::to_string(train_.micro_batch_size) + " × " + std::to_string(dp_size_) + ")");
  };
  multiple(train_.global_batch_size, "global_batch_size");
  if (train_.rampup_batch_size > 0) {
    multiple(train_.rampup_batch_size, "rampup_batch_size");
    multiple(train_.rampup_increment, "rampup_increment");
  }
  per_dp_ = train_.global_batch_size / dp_size_;
  micro_batches_ = per_dp_ / train_.micro_batch_size;

  const GlmConfig& c = model.config();
  const Device dev = model.device();
  const ModelShard& shard = model.shard();
  const int64_t pad = dp_pad(options_);
  GLMRT_CHECK(model.params().flat().numel() % pad == 0,
              "Trainer: under ZeRO the model's parameters must be allocated with pad_multiple ", pad);
  grads_ = GlmParams::allocate(c, DType::F32, dev, shard, pad);
  if (options_.zero && options_.groups) {
    const int64_t total = grads_.flat().numel(), len = total / dp_size_;
    shard_begin_ = dp_rank_ * len;
    master_shard_ = Tensor::empty({len}, DType::F32, dev);
    convert(model.params().flat().slice_rows(shard_begin_, shard_begin_ + len), master_shard_);
    exp_avg_shard_ = Tensor::zeros({len}, DType::F32, dev);
    exp_avg_sq_shard_ = Tensor::zeros({len}, DType::F32, dev);
    // With one data-parallel rank the shard is the whole gradient buffer.
    grad_shard_ = dp_size_ == 1 ? grads_.flat() : Tensor::zeros({len}, DType::F32, dev);
  } else {
    master_is_model_ = model.dtype() == DType::F32;
    exp_avg_ = GlmParams::allocate(c, DType::F32, dev, shard);
    exp_avg_sq_ = GlmParams::allocate(c, DType::F32, dev, shard);
    if (!master_is_model_) {
      master_ = GlmParams::allocate(c, DType::F32, dev, shard);
      Tensor dst = master_.flat();
      convert(model.params().flat(), dst);
    }
  }
}

int64_t Trainer::current_global_batch() const {
  const TrainConfig& t = train_;
  if (t.rampup_batch_size <= 0) return t.global_batch_size;
  const int64_t increments = (t.global_batch_size - t.rampup_batch_size) / t.rampup_increment;
  const int64_t samples_per_increment = std::max<int64_t>(1, t.rampup_samples / increments);
  return std::min(t.global_batch_size,
                  t.rampup_batch_size + (consumed_ / samples_per_increment) * t.rampup_increment);
}

StepMetrics Trainer::step() {
  const auto start = std::chrono::steady_clock::now();
  const GlmConfig& c = model_.config();
  const ModelShard& shard = model_.shard();
  ProcessGroups* g = options_.groups;
  const int64_t global_batch = current_global_batch();
  per_dp_ = global_batch / dp_size_;
  micro_batches_ = per_dp_ / train_.micro_batch_size;
  StepMetrics m;
  m.iteration = ++iteration_;
  m.loss_scale = scaler_.scale();
  grads_.flat().zero_();

  GlmModel::TrainOptions to;
  to.ctx.hidden_dropout = static_cast<float>(train_.hidden_dropout);
  to.ctx.attention_dropout = static_cast<float>(train_.attention_dropout);
  to.ctx.seed = train_.seed;
  to.ctx.step = static_cast<uint64_t>(iteration_);
  to.embedding_grad_shrink = static_cast<float>(train_.embedding_grad_shrink);
  to.grad_scale = static_cast<float>(scaler_.scale() /
                                     static_cast<double>(micro_batches_ * dp_size_));
  to.recompute = train_.recompute;

  const int64_t base = consumed_;  // global index of the step's first sample
  const int64_t seq = samples_->seq_length();
  const int64_t n = train_.micro_batch_size * seq;
  // Micro-batch j of this data-parallel rank holds rows [r·G/D + j·mbs, … + mbs) of the step.
  auto row_offset = [&](int j) { return dp_rank_ * per_dp_ + j * train_.micro_batch_size; };
  auto micro_batch = [&](int j) {
    std::vector<Sample> rows;
    for (int64_t k = 0; k < train_.micro_batch_size; ++k) rows.push_back(samples_->get(base + row_offset(j) + k));
    std::vector<const Sample*> ptrs;
    for (const Sample& r : rows) ptrs.push_back(&r);
    return make_micro_batch(ptrs, c);
  };

  std::map<int, GlmModel::MicroBatchState> states;
  std::map<int, Tensor> inputs, outputs, douts, dins;
  double loss_sum = 0;
  auto buffer = [&] { return Tensor::empty({n, c.hidden_size}, model_.dtype(), model_.device()); };
  // Where a receive lands and from which stage.
  auto recv_slot = [&](const PipeInstruction& in) -> std::pair<Tensor*, int> {
    if (in.op == PipeOp::RecvActivation) return {&(inputs[in.micro_batch] = buffer()), stage_ - 1};
    return {&(douts[in.micro_batch] = buffer()), stage_ + 1};
  };
  auto is_recv = [](PipeOp op) { return op == PipeOp::RecvActivation || op == PipeOp::RecvGrad; };
  const std::vector<PipeInstruction> schedule =
      one_f_one_b_schedule(stages_, stage_, static_cast<int>(micro_batches_));
  for (size_t k = 0; k < schedule.size(); ++k) {
    const PipeInstruction& in = schedule[k];
    const int j = in.micro_batch;
    switch (in.op) {
      case PipeOp::RecvActivation:
      case PipeOp::RecvGrad: {
        auto [slot, peer] = recv_slot(in);
        g->pp->recv(*slot, peer);
        break;
      }
      case PipeOp::SendActivation:
      case PipeOp::SendGrad: {
        const bool act = in.op == PipeOp::SendActivation;
        std::map<int, Tensor>& from = act ? outputs : dins;
        const int peer = act ? stage_ + 1 : stage_ - 1;
        if (k + 1 < schedule.size() && is_recv(schedule[k + 1].op)) {
          // A send followed by a receive goes out as one group (no neighbour deadlock on NCCL).
          auto [slot, recv_peer] = recv_slot(schedule[++k]);
          g->pp->send_recv(from[j], peer, *slot, recv_peer);
        } else {
          g->pp->send(from[j], peer);
        }
        from.erase(j);
        break;
      }
      case PipeOp::Forward: {
        const MicroBatch mb = micro_batch(j);
        to.ctx.row_offset = row_offset(j);
        Tensor out = model_.forward_train(mb.batch, inputs[j], mb.targets, mb.loss_mask, to, states[j]);
        inputs.erase(j);
        if (shard.last_stage) loss_sum += states[j].loss;
        else outputs[j] = out;
        break;
      }
      case PipeOp::Backward: {
        Tensor din = model_.backward_train(states[j], douts[j], to, grads_);
        states.erase(j);
        douts.erase(j);
        if (!shard.first_stage) dins[j] = din;
        break;
      }
      case PipeOp::ReduceGrads:
        if (g) g->pp->wait_sends();
        reduce_gradients();
        break;
      case PipeOp::OptimizerStep: {
        // The step loss: mean over every micro-batch of the global batch (known on last stages).
        Tensor loss = Tensor::from_floats({0.0f}, {1}, DType::F64);
        if (shard.last_stage && tp_rank_ == 0) loss.data_as<double>()[0] = loss_sum;
        if (g) g->world->all_reduce(loss, ReduceOp::Sum);
        m.loss = loss.item(0) / static_cast<double>(micro_batches_ * dp_size_);
        optimizer_step(m);
        break;
      }
    }
  }
  consumed_ += global_batch;
  m.consumed_samples = consumed_;
  m.tokens = global_batch * seq;
  m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return m;
}

void Trainer::reduce_gradients() {
  ProcessGroups* g = options_.groups;
  if (!g) return;
  // The tied word embedding: its input use lives on the first stage, its output use on the last.
  if (g->embedding && g->embedding->size() > 1) g->embedding->all_reduce(grads_.word_embeddings, ReduceOp::Sum);
  if (dp_size_ == 1) return;
  Tensor flat = grads_.flat();
  if (options_.zero) {
    g->dp->reduce_scatter(flat, grad_shard_);
    return;
  }
  const int64_t total = flat.numel(), bucket = options_.bucket_elements;
  for (int64_t b = 0; b < total; b += bucket) {
    Tensor piece = flat.slice_rows(b, std::min(total, b + bucket));
    g->dp->all_reduce(piece, ReduceOp::Sum);
  }
}

bool Trainer::counts(size_t i) const {
  const ParamSpec& s = grads_.specs()[i];
  if (s.rule == ShardRule::Replicated && tp_rank_ != 0) return false;  // same on every tp rank
  // The tied embedding is held by the first and the last stage: count it once.
  if (s.name == "transformer.word_embeddings.weight" && stages_ > 1 && !model_.shard().first_stage)
    return false;
  return true;
}

double Trainer::grad_sum_squares(int64_t begin, int64_t end) const {
  // Sum over [begin, end) of grads flat; under ZeRO the values come from grad_shard_.
  double sq = 0;
  for (size_t i = 0; i < grads_.size(); ++i) {
    if (!counts(i)) continue;
    const int64_t p0 = grads_.offset(i), p1 = p0 + grads_.tensor(i).numel();
    const int64_t a = std::max(p0, begin), b = std::min(p1, end);
    if (a >= b) continue;
    sq += options_.zero && options_.groups
              ? sum_squares(grad_shard_.slice_rows(a - shard_begin_, b - shard_begin_))
              : sum_squares(grads_.flat().slice_rows(a, b));
  }
  return sq;
}

void Trainer::optimizer_step(StepMetrics& m) {
  ProcessGroups* g = options_.groups;
  const bool zero = options_.zero && g;
  // Global gradient norm (deduplicated across tp, pp and dp); inf/NaN means an overflow.
  double local = 0;
  if (zero) local = grad_sum_squares(shard_begin_, shard_begin_ + grad_shard_.numel());
  else if (dp_rank_ == 0) local = grad_sum_squares(0, grads_.flat().numel());
  Tensor sq = Tensor::from_floats({0.0f}, {1}, DType::F64);
  sq.data_as<double>()[0] = local;
  if (g) g->world->all_reduce(sq, ReduceOp::Sum);
  const double total_scale = scaler_.scale();  // gradients hold loss_scale × ∇(mean loss)
  m.grad_norm = std::sqrt(sq.item(0)) / total_scale;
  const bool overflow = !std::isfinite(sq.item(0));
  scaler_.update(overflow);
  if (overflow) {
    m.skipped = true;
    m.lr = learning_rate(opt_, train_.steps, updates_ + 1);
    return;
  }
  ++updates_;
  m.lr = learning_rate(opt_, train_.steps, updates_);
  double coef = 1.0 / total_scale;  // unscale, then clip (torch clip_grad_norm_ semantics)
  if (opt_.clip_grad > 0) {
    const double clip = opt_.clip_grad / (m.grad_norm + 1e-6);
    if (clip < 1.0) coef *= clip;
  }
  auto update = [&](Tensor p, const Tensor& grad, Tensor mo, Tensor v, size_t i) {
    const double wd = grads_.specs()[i].weight_decay ? opt_.weight_decay : 0.0;
    adamw_update(p, grad, mo, v, static_cast<float>(m.lr), static_cast<float>(opt_.beta1),
                 static_cast<float>(opt_.beta2), static_cast<float>(opt_.eps),
                 static_cast<float>(wd), updates_, static_cast<float>(coef));
  };
  if (zero) {
    const int64_t s0 = shard_begin_, s1 = s0 + master_shard_.numel();
    for (size_t i = 0; i < grads_.size(); ++i) {
      const int64_t p0 = grads_.offset(i), p1 = p0 + grads_.tensor(i).numel();
      const int64_t a = std::max(p0, s0), b = std::min(p1, s1);
      if (a >= b) continue;
      update(master_shard_.slice_rows(a - s0, b - s0), grad_shard_.slice_rows(a - s0, b - s0),
             exp_avg_shard_.slice_rows(a - s0, b - s0), exp_avg_sq_shard_.slice_rows(a - s0, b - s0), i);
    }
    // Every rank gets the updated parameters of every shard.
    Tensor mine = Tensor::empty({master_shard_.numel()}, model_.dtype(), model_.device());
    convert(master_shard_, mine);
    Tensor flat = model_.params().flat();
    g->dp->all_gather(mine, flat);
    return;
  }
  GlmParams& master = master_is_model_ ? model_.params() : master_;
  for (size_t i = 0; i < grads_.size(); ++i)
    update(master.tensor(i), grads_.tensor(i), exp_avg_.tensor(i), exp_avg_sq_.tensor(i), i);
  if (!master_is_model_) {
    Tensor dst = model_.params().flat();
    convert(master_.flat(), dst);
  }
}

}  // namespace glmrt

namespace glmrt {

double Trainer::evaluate() {
  GLMRT_CHECK(validation_ != nullptr, "evaluate: no validation samples");
  const GlmConfig& c = model_.config();
  ProcessGroups* g = options_.groups;
  const int64_t per_dp = train_.global_batch_size / dp_size_;
  const int64_t m_count = train_.eval_batches * per_dp / train_.micro_batch_size;
  const int64_t seq = validation_->seq_length(), n = train_.micro_batch_size * seq;
  GlmModel::TrainOptions to;  // no dropout: ctx.training only gates it through these rates
  to.ctx.seed = train_.seed;
  to.grad_scale = 0.0f;
  double loss_sum = 0;
  std::map<int, Tensor> inputs, outputs;
  for (const PipeInstruction& in : forward_only_schedule(stages_, stage_, static_cast<int>(m_count))) {
    const int j = in.micro_batch;
    switch (in.op) {
      case PipeOp::RecvActivation:
        inputs[j] = Tensor::empty({n, c.hidden_size}, model_.dtype(), model_.device());
        g->pp->recv(inputs[j], stage_ - 1);
        break;
      case PipeOp::Forward: {
        // Batches of the validation set, in order: batch b, this replica's rows of it.
        const int64_t b = j / (per_dp / train_.micro_batch_size);
        const int64_t within = j % (per_dp / train_.micro_batch_size);
        const int64_t first = b * train_.global_batch_size + dp_rank_ * per_dp + within * train_.micro_batch_size;
        std::vector<Sample> rows;
        for (int64_t k = 0; k < train_.micro_batch_size; ++k) rows.push_back(validation_->get(first + k));
        std::vector<const Sample*> ptrs;
        for (const Sample& r : rows) ptrs.push_back(&r);
        const MicroBatch mb = make_micro_batch(ptrs, c);
        GlmModel::MicroBatchState st;
        Tensor out = model_.forward_train(mb.batch, inputs[j], mb.targets, mb.loss_mask, to, st);
        inputs.erase(j);
        if (model_.shard().last_stage) loss_sum += st.loss;
        else outputs[j] = out;
        break;
      }
      case PipeOp::SendActivation:
        g->pp->send(outputs[j], stage_ + 1);
        outputs.erase(j);
        break;
      default:
        break;
    }
  }
  if (g) g->pp->wait_sends();
  Tensor loss = Tensor::from_floats({0.0f}, {1}, DType::F64);
  if (model_.shard().last_stage && tp_rank_ == 0) loss.data_as<double>()[0] = loss_sum;
  if (g) g->world->all_reduce(loss, ReduceOp::Sum);
  return loss.item(0) / static_cast<double>(m_count * dp_size_);
}

}  // namespace glmrt

namespace glmrt {

void Trainer::restore(const State& s) {
  iteration_ = s.iteration;
  updates_ = s.updates;
  consumed_ = s.consumed_samples;
  scaler_.restore(s.loss_scale);
}

NamedTensors Trainer::optimizer_state() {
  const bool zero = options_.zero && options_.groups;
  Tensor master_flat, m_flat, v_flat;  // full local flats (ZeRO: gathered over dp)
  if (zero) {
    const int64_t total = grads_.flat().numel();
    auto gather = [&](const Tensor& shard) {
      if (dp_size_ == 1) return shard.to(Device::cpu());
      Tensor full = Tensor::empty({total}, DType::F32, shard.device());
      options_.groups->dp->all_gather(shard, full);
      return full.to(Device::cpu());
    };
    master_flat = gather(master_shard_);
    m_flat = gather(exp_avg_shard_);
    v_flat = gather(exp_avg_sq_shard_);
  }
  NamedTensors out;
  const GlmParams& master = master_is_model_ ? model_.params() : master_;
  for (size_t i = 0; i < grads_.size(); ++i) {
    const std::string& name = grads_.specs()[i].name;
    const Shape& shape = grads_.specs()[i].local_shape;
    auto piece = [&](const Tensor& flat) {
      const int64_t o = grads_.offset(i);
      return flat.slice_rows(o, o + shape_numel(shape)).view(shape).clone();
    };
    if (zero) {
      out.emplace_back(name + ".master", piece(master_flat));
      out.emplace_back(name + ".exp_avg", piece(m_flat));
      out.emplace_back(name + ".exp_avg_sq", piece(v_flat));
    } else {
      Tensor w = master.tensor(i).to(Device::cpu());
      out.emplace_back(name + ".master", w.dtype() == DType::F32 ? w : w.to(DType::F32));
      out.emplace_back(name + ".exp_avg", exp_avg_.tensor(i).to(Device::cpu()));
      out.emplace_back(name + ".exp_avg_sq", exp_avg_sq_.tensor(i).to(Device::cpu()));
    }
  }
  return out;
}

void Trainer::load_optimizer_state(const std::function<Tensor(const std::string&)>& get) {
  const bool zero = options_.zero && options_.groups;
  GlmParams& master = master_is_model_ ? model_.params() : master_;
  for (size_t i = 0; i < grads_.size(); ++i) {
    const std::string& name = grads_.specs()[i].name;
    const Tensor w = get(name + ".master"), m = get(name + ".exp_avg"), v = get(name + ".exp_avg_sq");
    if (zero) {
      // Copy the part of this parameter that falls into the rank's shard.
      const int64_t p0 = grads_.offset(i), p1 = p0 + w.numel();
      const int64_t s0 = shard_begin_, s1 = s0 + master_shard_.numel();
      const int64_t a = std::max(p0, s0), b = std::min(p1, s1);
      if (a < b) {
        master_shard_.slice_rows(a - s0, b - s0).copy_from(w.view({w.numel()}).slice_rows(a - p0, b - p0));
        exp_avg_shard_.slice_rows(a - s0, b - s0).copy_from(m.view({m.numel()}).slice_rows(a - p0, b - p0));
        exp_avg_sq_shard_.slice_rows(a - s0, b - s0).copy_from(v.view({v.numel()}).slice_rows(a - p0, b - p0));
      }
    } else {
      if (master.tensor(i).dtype() == DType::F32) master.tensor(i).copy_from(w);
      exp_avg_.tensor(i).copy_from(m);
      exp_avg_sq_.tensor(i).copy_from(v);
    }
  }
  if (!zero && !master_is_model_) {
    Tensor dst = model_.params().flat();
    convert(master_.flat(), dst);
  }
}

}  // namespace glmrt
