// glmrt forward: logits of a batch from a full weight file, on any 3D layout.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include "checkpoint/full_weights.h"
#include "checkpoint/safetensors.h"
#include "inference/pipeline_forward.h"
#include "launcher/inference_setup.h"
#include "launcher/model_source.h"
#include "launcher/options.h"
#include "launcher/parallel_setup.h"
#include "launcher/run_config.h"
#include "model/glm_model.h"
#include "train/checkpointing.h"

namespace glmrt {

int run_forward(const Args& args) {
  po::options_description desc("glmrt forward");
  desc.add_options()
    ("config", po::value<std::string>()->required(), "model config (YAML)")
    ("weights", po::value<std::string>(), "full (TP=1) weights, safetensors")
    ("load", po::value<std::string>(), "or: the latest checkpoint in this folder (any layout)")
    ("input", po::value<std::string>()->required(),
     "batch JSON: {tokens, position_ids, sep, segment_lengths?}")
    ("output", po::value<std::string>()->required(), "output safetensors: F32 `logits` [b, s, V]");
  add_quantization_option(desc);
  add_compute_options(desc);
  add_parallel_options(desc);
  add_set_option(desc);
  po::variables_map vm;
  if (!parse_options("forward", desc, args, vm)) return 0;
  const ComputeOptions compute = compute_options(vm);

  // Read and validate everything before computing: a bad input never leaves an output file.
  RunConfig rc = load_run_config(vm["config"].as<std::string>(), config_overrides(vm));
  const std::string input = vm["input"].as<std::string>();
  const Batch batch = build_batch(read_batch_json_file(input), rc.model, input);
  const ModelSource source(vm, rc.model);
  const int bits = quantization_bits(vm, source);
  ParallelRuntime rt = setup_parallel(rc, vm, compute.device);
  GlmParams params = allocate_inference_params(bits, rc.model, compute, rt);
  source.load(rc.model, params);
  report_quantization(params, rc.model, rt, compute, source, "forward");
  if (rt.is_world_root() && !source.note().empty())
    std::fprintf(stderr, "glmrt forward: %s\n", source.note().c_str());
  GlmModel model(rc.model, std::move(params), rt.tp);

  const auto start = std::chrono::steady_clock::now();
  const Tensor logits = pipeline_forward(model, *rt.groups, batch);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!rt.is_world_root()) return 0;
  const std::string output = vm["output"].as<std::string>();
  write_safetensors(output, {{"logits", logits}});
  double max_abs = 0;
  const float* p = logits.data_as<float>();
  for (int64_t i = 0; i < logits.numel(); ++i) max_abs = std::max(max_abs, std::abs(double(p[i])));
  std::fprintf(stderr,
               "glmrt forward: %lld rows x %lld tokens on %s (%s), layout %s: %.1f ms, %.0f "
               "tokens/s; logits %s max|logit| %.3f -> %s\n",
               static_cast<long long>(batch.batch), static_cast<long long>(batch.seq),
               compute.device.str().c_str(), std::string(dtype_name(compute.dtype)).c_str(),
               rt.groups->topo.layout().str().c_str(), seconds * 1e3,
               double(batch.batch * batch.seq) / seconds, shape_str(logits.shape()).c_str(),
               max_abs, output.c_str());
  return 0;
}

}  // namespace glmrt
