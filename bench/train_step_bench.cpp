// Training-step benchmark of glmrt on the CPU: times N optimizer steps (forward + backward of
// every micro-batch, gradient accumulation, global-norm clipping, AdamW) of the fixed small GLM
// of bench/configs/train_bench.yaml through glmrt's Trainer, and measures in the same run the
// GEMM rate that serves as the peak for MFU. bench/train_bench.sh runs it beside the PyTorch
// implementation of the same model (bench/torch_train_step.py) and prints the comparison table.
//
// Usage:
//   train_step_bench --config bench/configs/train_bench.yaml [--steps 3] [--threads T]
//                    [--precision fp32|bf16] [--device cpu|cuda] [--json] [--profile]
//
// --device cuda (a CUDA build on a GPU machine) runs the same steps on GPU 0; the GEMM peak is
// then glmrt::gemm on the GPU (cuBLAS) at --gemm-size, and every timing synchronizes the device.
// bench/gpu_train_bench.sh runs it beside bench/torch_train_step.py --device cuda.
//
// Model FLOPs per step (the same formula as bench/torch_train_step.py):
//   GEMMs:     6 · (non-embedding matmul parameters + h·V) · tokens
//              (2 forward + 4 backward per parameter and token; h·V is the tied output head)
//   attention: 12 · s² · h per layer and sequence
//              (QKᵀ and PV: 4·s²·h forward, ×3 for forward + backward)
// The attention term counts the full s×s score matrix although the prefix/causal mask leaves part
// of it unused (glmrt's CPU attention computes the full matrix too, then zeroes the masked part),
// as is usual for MFU. Embedding lookups, LayerNorm, GeGLU, softmax, RoPE and the optimizer are
// not counted.
//
// GEMM peak: glmrt::gemm on F32 tensors of 2048×2048×2048 (best of a few runs), i.e. the sgemm
// rate of the BLAS glmrt uses at a large square shape; for bf16, glmrt::gemm on BF16 tensors of
// the same size (whatever path glmrt takes for BF16 GEMMs on this CPU). MFU is achieved/peak.
//
// --profile additionally times every op of one layer's forward and backward, the embedding /
// output head / loss of one micro-batch and the optimizer, at the benchmark's shapes, and prints
// where a step's time goes (op time × calls per step).
#include <cblas.h>
#include <omp.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/cpu/onednn_gemm.h"
#ifdef GLMRT_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif
#include "kernels/ops.h"
#include "launcher/run_config.h"
#include "model/init.h"
#include "train/trainer.h"

namespace {

using namespace glmrt;
namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

// Human-readable progress and results: stdout, or stderr with --json (stdout then carries only
// the JSON line).
FILE* g_info = stdout;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- CPU accounting: how much of the machine other processes used while we were timing ------

// Busy CPU seconds of the whole machine (user + nice + system + irq + softirq), from /proc/stat.
double machine_busy_seconds() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
  if (!(in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq)) return NAN;
  return (user + nice + system + irq + softirq) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double own_cpu_seconds() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}

// CPU cores used by other processes during a timed region (≈ 0 on a quiet machine; the machine
// this benchmark was written on is shared, and a concurrent build halves every figure).
class LoadMeter {
 public:
  LoadMeter() : t0_(Clock::now()), busy0_(machine_busy_seconds()), own0_(own_cpu_seconds()) {}
  double other_cores() const {
    const double wall = seconds_since(t0_);
    const double other = (machine_busy_seconds() - busy0_) - (own_cpu_seconds() - own0_);
    return wall > 0 ? std::max(0.0, other / wall) : 0.0;
  }

 private:
  Clock::time_point t0_;
  double busy0_, own0_;
};

// ---- Synthetic data --------------------------------------------------------------------------

// `count` GLM-like training rows of the config's full length in [gMASK] mode (one segment):
//   tokens  = ctx (ctx_len ids) + [gMASK, sop] + gen[:-1],   targets = the next token,
//   sep     = ctx_len + 1 (the bidirectional prefix ends after [gMASK]),
//   loss on the generated part (positions ctx_len + 1 .. seq - 1), positions 0 .. seq - 1.
// ctx_len ≈ 200 (199, 207, 215, … so the rows differ). Token ids are uniform over the ordinary
// ids (1 up to the lowest special id) from a fixed-seed RNG.
std::vector<Sample> make_samples(const GlmConfig& c, int64_t count, uint64_t seed) {
  const int64_t seq = c.max_sequence_length;
  std::mt19937_64 rng(seed);
  const int32_t top = std::min({c.tokens.eos, c.tokens.mask, c.tokens.gmask, c.tokens.sop});
  std::uniform_int_distribution<int32_t> text(1, top - 1);
  std::vector<Sample> out;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t ctx_len = std::min<int64_t>(199 + 8 * r, seq - 2);
    std::vector<int32_t> full;  // seq + 1 tokens
    for (int64_t i = 0; i < ctx_len; ++i) full.push_back(text(rng));
    full.push_back(c.tokens.gmask);
    full.push_back(c.tokens.sop);
    while (static_cast<int64_t>(full.size()) < seq + 1) full.push_back(text(rng));
    Sample s;
    s.tokens.assign(full.begin(), full.end() - 1);
    s.targets.assign(full.begin() + 1, full.end());
    for (int64_t i = 0; i < seq; ++i) {
      s.position_ids.push_back(static_cast<int32_t>(i));
      s.loss_mask.push_back(i > ctx_len ? 1.0f : 0.0f);
    }
    s.sep = {static_cast<int32_t>(ctx_len + 1)};
    s.segment_lengths = {static_cast<int32_t>(seq)};
    out.push_back(std::move(s));
  }
  return out;
}

// ---- FLOP count ------------------------------------------------------------------------------

struct FlopCount {
  double matmul_params = 0;  // non-embedding matmul parameters + h·V (tied head)
  double gemm = 0, attention = 0, total = 0;  // per step
};

FlopCount step_flops(const GlmConfig& c, int64_t seq, int64_t sequences) {
  const double h = static_cast<double>(c.hidden_size), f = static_cast<double>(c.ffn_hidden_size);
  const double L = static_cast<double>(c.num_layers), V = static_cast<double>(c.vocab_size);
  const double s = static_cast<double>(seq), rows = static_cast<double>(sequences);
  FlopCount fc;
  // Per layer: query_key_value 3h·h, dense h·h, dense_h_to_4h 2F·h, dense_4h_to_h F·h.
  fc.matmul_params = L * (3 * h * h + h * h + 2 * f * h + f * h) + h * V;
  fc.gemm = 6.0 * fc.matmul_params * s * rows;
  fc.attention = 12.0 * s * s * h * L * rows;  // 4·s²·h forward per layer, ×3 fwd + bwd
  fc.total = fc.gemm + fc.attention;
  return fc;
}

// ---- GEMM peak -------------------------------------------------------------------------------

Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, float stddev = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
  for (float& x : v) x = dist(rng);
  return Tensor::from_floats(v, shape, dtype);
}

// GFLOP/s of glmrt::gemm c = a·b on n×n×n tensors of `dtype`: best of `reps` after one warm-up.
// Waits for the device's queued work (a no-op on the CPU).
void sync(Device dev) {
#ifdef GLMRT_WITH_CUDA
  if (dev.is_cuda()) cuda::synchronize();
#else
  (void)dev;
#endif
}

double gemm_rate(DType dtype, int64_t n, int reps, Device dev = Device::cpu()) {
  const Tensor a = random_tensor({n, n}, dtype, 1).to(dev), b = random_tensor({n, n}, dtype, 2).to(dev);
  Tensor c = Tensor::empty({n, n}, dtype, dev);
  gemm(a, false, b, false, c, 1.0f, 0.0f);
  sync(dev);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    gemm(a, false, b, false, c, 1.0f, 0.0f);
    sync(dev);
    best = std::min(best, seconds_since(t0));
  }
  return 2.0 * static_cast<double>(n) * n * n / best / 1e9;
}

// ---- Op profile ------------------------------------------------------------------------------

// Accumulates the wall time of labelled ops over one pass; rows keep their first-seen order.
class OpProfile {
 public:
  struct Row {
    std::string group, label;
    double calls_per_step = 0;  // how often one pass's worth of this op runs per step
    double flops = 0;           // per pass (GEMMs and attention only)
    double seconds = 1e30;      // best pass
    double pass_seconds = 0;    // the current pass
  };

  // Times fn() under `label`; `calls_per_step` scales one pass's time to a step.
  void time(const std::string& group, const std::string& label, double calls_per_step,
            double flops, const std::function<void()>& fn) {
    auto it = index_.find(label);
    if (it == index_.end()) {
      it = index_.emplace(label, rows_.size()).first;
      rows_.push_back({group, label, calls_per_step, 0, 1e30, 0});
    }
    Row& r = rows_[it->second];
    if (first_in_pass_.insert(label).second) r.pass_seconds = 0, r.flops = 0;
    const auto t0 = Clock::now();
    fn();
    r.pass_seconds += seconds_since(t0);
    r.flops += flops;
  }
  // Ends a pass: each row keeps its best pass.
  void end_pass() {
    for (Row& r : rows_) r.seconds = std::min(r.seconds, r.pass_seconds);
    first_in_pass_.clear();
  }
  const std::vector<Row>& rows() const { return rows_; }

 private:
  std::vector<Row> rows_;
  std::map<std::string, size_t> index_;
  std::set<std::string> first_in_pass_;
};

// Times, op by op, one layer's forward and backward (the op sequence of model/glm_layer.cpp,
// without the dropout calls, which are no-ops at p = 0), the embedding, output head and loss of
// one micro-batch, and the optimizer, all at the benchmark's shapes and in the model's dtype
// (parameter gradients and optimizer state F32). The rows are then scaled to a step and compared
// with the measured step time.
nlohmann::json profile_step(GlmModel& model, const TrainConfig& tc, const Batch& batch,
                            const Tensor& targets, double measured_step_seconds) {
  const GlmConfig& c = model.config();
  const DType dt = model.dtype();
  const Device dev = model.device();
  const int64_t n = batch.batch * batch.seq, h = c.hidden_size, f = c.ffn_hidden_size;
  const int64_t V = c.vocab_size, heads = c.num_attention_heads, d = c.head_dim();
  const double s = static_cast<double>(batch.seq), nd = static_cast<double>(n);
  const double micro = static_cast<double>(tc.global_batch_size / tc.micro_batch_size);
  const double per_layer = micro * static_cast<double>(c.num_layers);  // layer ops per step
  const float alpha = static_cast<float>(c.alpha()), eps = static_cast<float>(c.layernorm_epsilon);
  const float egs = static_cast<float>(tc.embedding_grad_shrink);
  const LayerParams& p = model.params().layers[0];
  const RopeTables rope = build_rope_tables(d, c.max_sequence_length, c.rotary_base,
                                            c.rotary_fp16_tables);
  GlmParams grads = GlmParams::allocate(c, DType::F32, dev);
  LayerParams& g = grads.layers[0];
  // Forward intermediates (a) and backward work buffers (w), named as in LayerActivations.
  struct Buffers {
    Tensor input, ln1_out, ln1_mean, ln1_rstd, qkv, context, attn_lse, attn_residual, ln2_out,
        ln2_mean, ln2_rstd, h4h, geglu;
  };
  auto buffers = [&] {
    auto t = [&](int64_t cols) { return Tensor::zeros({n, cols}, dt, dev); };
    auto stat = [&](int64_t len) { return Tensor::zeros({len}, DType::F32, dev); };
    return Buffers{t(h), t(h), stat(n), stat(n), t(3 * h), t(h), stat(n * heads), t(h), t(h),
                   stat(n), stat(n), t(2 * f), t(f)};
  };
  Buffers a = buffers(), w = buffers();
  const Tensor x0 = random_tensor({n, h}, dt, 3);
  const Tensor dout = random_tensor({n, h}, dt, 4, 1e-3f);
  Tensor x = Tensor::empty({n, h}, dt, dev), dx = Tensor::empty({n, h}, dt, dev);
  const double attn_flops = 4.0 * s * s * static_cast<double>(h) * static_cast<double>(batch.batch);
  auto lin = [&](double m_out, double k_in) { return 2.0 * nd * m_out * k_in; };

  // Optimizer state: an F32 copy of the weights (the fp32 master) and the two Adam moments.
  GlmParams master = GlmParams::allocate(c, DType::F32, dev);
  GlmParams exp_avg = GlmParams::allocate(c, DType::F32, dev);
  GlmParams exp_avg_sq = GlmParams::allocate(c, DType::F32, dev);
  {
    Tensor dst = master.flat();
    convert(model.params().flat(), dst);
  }

  // Output head and loss buffers.
  Tensor y = Tensor::zeros({n, h}, dt, dev), logits = Tensor::zeros({n, V}, dt, dev);
  Tensor mean = Tensor::zeros({n}, DType::F32, dev), rstd = Tensor::zeros({n}, DType::F32, dev);
  Tensor row_max = Tensor::zeros({n}, DType::F32, dev);
  Tensor sum_exp = Tensor::zeros({n}, DType::F32, dev);
  Tensor target_logit = Tensor::zeros({n}, DType::F32, dev);
  const Tensor dloss =
      Tensor::from_floats(std::vector<float>(static_cast<size_t>(n), 1.0f / nd), {n});

  const LoadMeter load;
  OpProfile prof;
  constexpr int kPasses = 5;  // each row keeps its best pass (robust to a busy machine)
  using Fn = std::function<void()>;
  // Ops that run once per layer and micro-batch (L), once per micro-batch (M), once per step (S).
  auto L = [&](const char* group, const std::string& label, double flops, const Fn& fn) {
    prof.time(group, label, per_layer, flops, fn);
  };
  auto M = [&](const char* group, const char* label, double flops, const Fn& fn) {
    prof.time(group, label, micro, flops, fn);
  };
  auto S = [&](const char* label, const Fn& fn) { prof.time("optimizer", label, 1, 0, fn); };
  // linear_backward split into its dx, dW and dbias parts.
  auto lin_bwd = [&](const std::string& name, const Tensor& in, const Tensor& wt, const Tensor& dy,
                     Tensor& dxx, Tensor& dw, Tensor& db, double out, double inn) {
    L("gemm", name + " bwd dx    dy.W", lin(out, inn),
      [&] { linear_backward(in, wt, dy, &dxx, nullptr, nullptr); });
    L("gemm", name + " bwd dW    dy^T.x", lin(out, inn),
      [&] { linear_backward(in, wt, dy, nullptr, &dw, nullptr); });
    L("bias grad", "bias grads (column sums of dy)", 0,
      [&] { linear_backward(in, wt, dy, nullptr, nullptr, &db); });
  };

  for (int pass = 0; pass < kPasses; ++pass) {
    // -- layer forward (model/glm_layer.cpp: glm_layer_forward)
    x.copy_from(x0);
    L("copy", "save layer input (copy)", 0, [&] { a.input.copy_from(x); });
    L("layernorm", "layernorm fwd", 0, [&] {
      layernorm_forward(x, p.input_layernorm_weight, p.input_layernorm_bias, eps, a.ln1_out,
                        &a.ln1_mean, &a.ln1_rstd);
    });
    L("gemm", "qkv fwd       x.W^T  W [3h,h]", lin(3.0 * h, h),
      [&] { linear_forward(a.ln1_out, p.qkv_weight, &p.qkv_bias, a.qkv); });
    L("rope", "rope fwd", 0,
      [&] { rope_forward(a.qkv, batch.position_ids, rope.cos, rope.sin, heads, d); });
    L("attention", "attention fwd", attn_flops, [&] {
      attention_forward(a.qkv, batch.mask_spans, batch.batch, heads, d, 1.0f, DropoutSpec{},
                        a.context, &a.attn_lse);
    });
    L("gemm", "dense fwd     x.W^T  W [h,h]", lin(h, h),
      [&] { linear_forward(a.context, p.dense_weight, &p.dense_bias, a.attn_residual); });
    L("elementwise", "residual scale_add", 0,
      [&] { scale_add(alpha, a.ln1_out, a.attn_residual, a.attn_residual); });
    L("layernorm", "layernorm fwd", 0, [&] {
      layernorm_forward(a.attn_residual, p.post_attention_layernorm_weight,
                        p.post_attention_layernorm_bias, eps, a.ln2_out, &a.ln2_mean, &a.ln2_rstd);
    });
    L("gemm", "h_to_4h fwd   x.W^T  W [2F,h]", lin(2.0 * f, h),
      [&] { linear_forward(a.ln2_out, p.h_to_4h_weight, &p.h_to_4h_bias, a.h4h); });
    L("geglu", "geglu fwd", 0, [&] { geglu_forward(a.h4h, a.geglu); });
    L("gemm", "4h_to_h fwd   x.W^T  W [h,F]", lin(h, f),
      [&] { linear_forward(a.geglu, p.fourh_to_h_weight, &p.fourh_to_h_bias, x); });
    L("elementwise", "residual scale_add", 0, [&] { scale_add(alpha, a.ln2_out, x, x); });

    // -- layer backward (glm_layer_backward)
    L("copy", "gradient copies", 0, [&] { w.input.copy_from(dout); });
    lin_bwd("4h_to_h", a.geglu, p.fourh_to_h_weight, w.input, w.geglu, g.fourh_to_h_weight,
            g.fourh_to_h_bias, h, f);
    L("geglu", "geglu bwd", 0, [&] { geglu_backward(a.h4h, w.geglu, w.h4h); });
    lin_bwd("h_to_4h", a.ln2_out, p.h_to_4h_weight, w.h4h, w.ln2_out, g.h_to_4h_weight,
            g.h_to_4h_bias, 2.0 * f, h);
    L("elementwise", "residual scale_add", 0,
      [&] { scale_add(alpha, dout, w.ln2_out, w.ln2_out); });
    L("layernorm", "layernorm bwd", 0, [&] {
      layernorm_backward(a.attn_residual, p.post_attention_layernorm_weight, a.ln2_mean,
                         a.ln2_rstd, w.ln2_out, w.attn_residual,
                         &g.post_attention_layernorm_weight, &g.post_attention_layernorm_bias);
    });
    L("copy", "gradient copies", 0, [&] { w.input.copy_from(w.attn_residual); });
    lin_bwd("dense", a.context, p.dense_weight, w.input, w.context, g.dense_weight, g.dense_bias,
            h, h);
    L("attention", "attention bwd", 2.0 * attn_flops, [&] {
      attention_backward(a.qkv, batch.mask_spans, batch.batch, heads, d, 1.0f, DropoutSpec{},
                         a.context, a.attn_lse, w.context, w.qkv);
    });
    L("rope", "rope bwd", 0,
      [&] { rope_backward(w.qkv, batch.position_ids, rope.cos, rope.sin, heads, d); });
    lin_bwd("qkv", a.ln1_out, p.qkv_weight, w.qkv, w.ln1_out, g.qkv_weight, g.qkv_bias, 3.0 * h, h);
    L("elementwise", "residual scale_add", 0,
      [&] { scale_add(alpha, w.attn_residual, w.ln1_out, w.ln1_out); });
    L("layernorm", "layernorm bwd", 0, [&] {
      layernorm_backward(a.input, p.input_layernorm_weight, a.ln1_mean, a.ln1_rstd, w.ln1_out, dx,
                         &g.input_layernorm_weight, &g.input_layernorm_bias);
    });

    // -- embedding, output head and loss of one micro-batch (model/glm_model.cpp)
    M("embedding", "embedding fwd", 0,
      [&] { embedding_forward(batch.tokens, model.params().word_embeddings, 0, x); });
    M("layernorm", "final layernorm fwd", 0, [&] {
      layernorm_forward(x0, model.params().final_layernorm_weight,
                        model.params().final_layernorm_bias, eps, y, &mean, &rstd);
    });
    M("gemm", "logits fwd    y.E^T  E [V,h]", lin(V, h),
      [&] { linear_forward(y, model.params().word_embeddings, nullptr, logits); });
    M("cross-entropy", "cross-entropy fwd + bwd", 0, [&] {
      cross_entropy_max(logits, row_max);
      cross_entropy_sums(logits, targets, 0, row_max, sum_exp, target_logit);
      cross_entropy_backward(logits, targets, 0, row_max, sum_exp, dloss, logits);
    });
    M("gemm", "logits bwd dy    dlogits.E", lin(V, h),
      [&] { gemm(logits, false, model.params().word_embeddings, false, dx, 1.0f, 0.0f); });
    M("gemm", "logits bwd dE    dlogits^T.y", lin(V, h),
      [&] { gemm(logits, true, y, false, grads.word_embeddings, egs, 1.0f); });
    M("layernorm", "final layernorm bwd", 0, [&] {
      layernorm_backward(x0, model.params().final_layernorm_weight, mean, rstd, dx, y,
                         &grads.final_layernorm_weight, &grads.final_layernorm_bias);
    });
    M("embedding", "embedding bwd (EGS scale + scatter-add)", 0, [&] {
      scale_inplace(dx, egs);
      embedding_backward(batch.tokens, dx, 0, grads.word_embeddings);
    });

    // -- optimizer (train/trainer.cpp: once per step)
    S("zero gradients", [&] { grads.flat().zero_(); });
    S("gradient norm (sum_squares)", [&] {
      double sq = 0;
      for (size_t i = 0; i < grads.size(); ++i) sq += sum_squares(grads.tensor(i));
      if (!std::isfinite(sq)) std::fprintf(stderr, "profile: non-finite gradient norm\n");
    });
    S("adamw_update", [&] {
      for (size_t i = 0; i < grads.size(); ++i)
        adamw_update(master.tensor(i), grads.tensor(i), exp_avg.tensor(i), exp_avg_sq.tensor(i),
                     1e-4f, 0.9f, 0.95f, 1e-8f, master.specs()[i].weight_decay ? 0.1f : 0.0f, 1,
                     1.0f);
    });
    if (dt != DType::F32) {
      S("fp32 master -> bf16 weights", [&] {
        Tensor dst = model.params().flat();
        convert(master.flat(), dst);
      });
    }
    prof.end_pass();
  }

  // ---- report
  const double other_load = load.other_cores();
  double total = 0, layer_ops = 0;
  for (const auto& r : prof.rows()) {
    total += r.seconds * r.calls_per_step;
    if (r.calls_per_step == per_layer) layer_ops += r.seconds;
  }
  nlohmann::json rows = nlohmann::json::array();
  std::map<std::string, double> by_group;
  for (const auto& r : prof.rows()) {
    const double step_s = r.seconds * r.calls_per_step;
    by_group[r.group] += step_s;
    rows.push_back({{"group", r.group}, {"op", r.label}, {"ms_per_call_pass", r.seconds * 1e3},
                    {"calls_per_step", r.calls_per_step}, {"ms_per_step", step_s * 1e3},
                    {"gflops", r.flops > 0 ? r.flops / r.seconds / 1e9 : 0.0}});
  }
  std::fprintf(g_info,
               "\nProfile (%s, %lld tokens per micro-batch, best of %d passes; ms per step = ms "
               "per pass × passes per step)\n",
               dtype_name(dt).data(), static_cast<long long>(n), kPasses);
  std::fprintf(g_info, "%-40s %10s %10s %10s %7s %9s\n", "op", "ms/pass", "calls/step", "ms/step",
               "share", "GFLOP/s");
  for (const auto& r : prof.rows()) {
    const double step_s = r.seconds * r.calls_per_step;
    std::fprintf(g_info, "%-40s %10.2f %10.0f %10.1f %6.1f%% ", r.label.c_str(), r.seconds * 1e3,
                 r.calls_per_step, step_s * 1e3, 100.0 * step_s / total);
    if (r.flops > 0) std::fprintf(g_info, "%9.1f\n", r.flops / r.seconds / 1e9);
    else std::fprintf(g_info, "%9s\n", "");
  }
  std::fprintf(g_info, "\nBy group (share of the sum of the rows):\n");
  std::vector<std::pair<double, std::string>> groups;
  for (const auto& [k, v] : by_group) groups.push_back({v, k});
  std::sort(groups.rbegin(), groups.rend());
  for (const auto& [v, k] : groups)
    std::fprintf(g_info, "  %-16s %9.1f ms  %5.1f%%\n", k.c_str(), v * 1e3, 100.0 * v / total);
  std::fprintf(g_info,
               "Sum of the rows: %.2f s per step; measured step: %.2f s (%.0f%% accounted).\n",
               total, measured_step_seconds, 100.0 * total / measured_step_seconds);
  std::fprintf(g_info, "One layer, forward + backward of one micro-batch: %.1f ms.\n",
               layer_ops * 1e3);
  if (other_load > 0.2)
    std::fprintf(g_info, "warning: other processes used %.2f cores during the profile: its times "
                 "are high\n", other_load);
  return {{"rows", rows},
          {"sum_seconds_per_step", total},
          {"layer_ms", layer_ops * 1e3},
          {"other_load_cores", other_load}};
}

int run(int argc, char** argv) {
  po::options_description desc("train_step_bench");
  desc.add_options()("help,h", "print this help")
    ("config", po::value<std::string>()->default_value("bench/configs/train_bench.yaml"),
     "run config (model, train, optimizer sections)")
    ("steps", po::value<int>()->default_value(3), "timed optimizer steps (after 1 warm-up step)")
    ("threads", po::value<int>(), "CPU threads for BLAS and OpenMP (default: the environment's)")
    ("precision", po::value<std::string>()->default_value("fp32"), "fp32 or bf16")
    ("gemm-size", po::value<int>()->default_value(2048), "size of the square peak GEMM")
    ("device", po::value<std::string>()->default_value("cpu"), "cpu or cuda (GPU 0)")
    ("json", "print one JSON line (last) with every figure")
    ("profile", "time every op of a step at the benchmark's shapes and print the breakdown");
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  po::notify(vm);
  const int steps = vm["steps"].as<int>();
  if (steps < 1) throw ConfigError("--steps: must be at least 1");
  int threads = omp_get_max_threads();
  if (vm.count("threads")) {
    threads = vm["threads"].as<int>();
    if (threads < 1) throw ConfigError("--threads: must be at least 1");
    openblas_set_num_threads(threads);  // as glmrt's --threads (launcher/options.cpp)
    omp_set_num_threads(threads);
  }
  const std::string prec = vm["precision"].as<std::string>();
  RunConfig rc = load_run_config(vm["config"].as<std::string>());
  DType dtype;
  if (prec == "fp32") rc.train.precision = Precision::FP32, dtype = DType::F32;
  else if (prec == "bf16") rc.train.precision = Precision::BF16, dtype = DType::BF16;
  else throw ConfigError("--precision: expected fp32 or bf16, got '" + prec + "'");
  const std::string device_name = vm["device"].as<std::string>();
  Device dev = Device::cpu();
  if (device_name == "cuda") {
#ifdef GLMRT_WITH_CUDA
    if (cuda::device_count() < 1) throw ConfigError("--device cuda: no CUDA device visible");
    dev = Device::cuda(0);
#else
    throw ConfigError("--device cuda: this build has no CUDA backend");
#endif
  } else if (device_name != "cpu") {
    throw ConfigError("--device: expected cpu or cuda, got '" + device_name + "'");
  }
  if (dev.is_cuda() && vm.count("profile")) throw ConfigError("--profile: CPU only");
  const bool json = vm.count("json") > 0;
  if (json) g_info = stderr;
  const GlmConfig& c = rc.model;
  const int64_t seq = c.max_sequence_length;
  const int64_t micro = rc.train.global_batch_size / rc.train.micro_batch_size;

  // GEMM rates, measured before the model takes memory and caches.
  const int64_t gsz = vm["gemm-size"].as<int>();
  const double peak_fp32 = gemm_rate(DType::F32, gsz, 5, dev);
  const double gemm_bf16 = gemm_rate(DType::BF16, gsz, 5, dev);
  // glmrt computes BF16 GEMMs with oneDNN where it has an optimised bf16 kernel for this CPU
  // (AMX, AVX512-BF16), else with the fp32 BLAS on F32 copies (kernels/cpu/low_precision.cpp).
  const std::string onednn = cpu::onednn_bf16_matmul_impl();
  const std::string bf16_impl = dev.is_cuda() ? "cuBLAS on " + dev.str()
                                : onednn == "unavailable" || onednn.rfind("ref", 0) == 0
                                    ? "fp32 BLAS on F32 copies (oneDNN bf16 matmul: " + onednn + ")"
                                    : "oneDNN bf16 matmul (" + onednn + ")";
  std::fprintf(g_info, "GEMM %lld³ via glmrt::gemm, %d threads: F32 %.1f GFLOP/s, BF16 %.1f GFLOP/s "
               "(%s)\n", static_cast<long long>(gsz), threads, peak_fp32, gemm_bf16,
               bf16_impl.c_str());

  // Model (seeded GLM-130B init, in the compute dtype) and trainer.
  const auto t_setup = Clock::now();
  GlmParams params = GlmParams::allocate(c, DType::F32, Device::cpu());
  init_glm_params(params, c, rc.train.seed);
  if (dtype != DType::F32 || dev.is_cuda()) {  // bf16: the same init rounded to BF16 (the trainer
    GlmParams moved = GlmParams::allocate(c, dtype, dev);  // keeps fp32 masters); or to the GPU
    Tensor dst = moved.flat();
    dst.copy_from(dtype == DType::F32 ? params.flat() : params.flat().to(dtype));
    params = std::move(moved);
  }
  GlmModel model(c, std::move(params));
  std::vector<Sample> samples = make_samples(c, rc.train.global_batch_size, 20240607);
  const MicroBatch profile_mb = make_micro_batch({&samples[0]}, c);  // for --profile
  Trainer trainer(model, rc.train, rc.optimizer, std::move(samples));
  const double setup_s = seconds_since(t_setup);

  // 1 warm-up step, then `steps` timed steps.
  const StepMetrics warm = trainer.step();
  sync(dev);
  std::fprintf(g_info, "setup %.1f s; warm-up step %.2f s, loss %.4f\n", setup_s, warm.seconds,
               warm.loss);
  std::vector<double> step_s;
  StepMetrics last;
  const LoadMeter load;
  const auto t0 = Clock::now();
  for (int i = 0; i < steps; ++i) {
    const auto ts = Clock::now();
    last = trainer.step();
    sync(dev);
    step_s.push_back(seconds_since(ts));
    std::fprintf(g_info, "step %d: %.2f s, loss %.4f, grad norm %.4f\n", i + 1, step_s.back(),
                 last.loss, last.grad_norm);
  }
  const double elapsed = seconds_since(t0);
  const double other_load = load.other_cores();
  if (!std::isfinite(last.loss)) throw Error("the loss is not finite");

  const double per_step = elapsed / steps;
  const int64_t tokens = rc.train.global_batch_size * seq;
  const FlopCount fc = step_flops(c, seq, rc.train.global_batch_size);
  const double gflops = fc.total / per_step / 1e9;
  const double peak = dtype == DType::F32 ? peak_fp32 : gemm_bf16;
  nlohmann::json out = {
      {"impl", "glmrt"}, {"precision", prec}, {"device", dev.str()}, {"threads", threads}, {"steps", steps},
      {"micro_batches", micro}, {"seq", seq}, {"tokens_per_step", tokens},
      {"seconds_per_step", per_step}, {"step_seconds", step_s},
      {"best_step_seconds", *std::min_element(step_s.begin(), step_s.end())},
      {"tokens_per_s", static_cast<double>(tokens) / per_step},
      {"gflop_per_step", fc.total / 1e9}, {"gflop_gemm", fc.gemm / 1e9},
      {"gflop_attention", fc.attention / 1e9}, {"matmul_params", fc.matmul_params},
      {"gflops", gflops}, {"gemm_peak_fp32_gflops", peak_fp32}, {"gemm_bf16_gflops", gemm_bf16},
      {"bf16_gemm_impl", bf16_impl}, {"gemm_size", gsz}, {"peak_used_gflops", peak},
      {"mfu", gflops / peak}, {"mfu_vs_fp32_peak", gflops / peak_fp32},
      {"loss_warmup", warm.loss}, {"loss_last", last.loss}, {"warmup_seconds", warm.seconds},
      {"other_load_cores", other_load}};
  std::fprintf(g_info, "\nglmrt %s, %d threads: %.2f s/step (%lld tokens, %lld micro-batches), "
               "%.0f tokens/s\n", prec.c_str(), threads, per_step, static_cast<long long>(tokens),
               static_cast<long long>(micro), static_cast<double>(tokens) / per_step);
  std::fprintf(g_info, "model FLOPs/step %.1f G (GEMMs %.1f G + attention %.1f G) -> %.1f GFLOP/s, "
               "MFU %.1f%% of the %s GEMM rate (%.1f%% of the fp32 peak %.1f GFLOP/s)\n",
               fc.total / 1e9, fc.gemm / 1e9, fc.attention / 1e9, gflops, 100.0 * gflops / peak,
               prec.c_str(), 100.0 * gflops / peak_fp32, peak_fp32);
  if (other_load > 0.2)
    std::fprintf(g_info, "warning: other processes used %.2f cores while the steps ran: the "
                 "figures are low\n", other_load);
  if (vm.count("profile"))
    out["profile"] = profile_step(model, rc.train, profile_mb.batch, profile_mb.targets, per_step);
  if (json) std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // progress lines appear as they happen, also in pipes
  try {
    return run(argc, argv);
  } catch (const po::error& e) {
    std::fprintf(stderr, "train_step_bench: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_step_bench: %s\n", e.what());
    return 1;
  }
}
