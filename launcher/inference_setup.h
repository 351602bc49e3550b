// What `glmrt generate` and `glmrt serve` share: the model source options (--config with
// --weights or --load), the generation flags, loading the model onto this rank's shard, the
// optional tokenizer and the engine.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "inference/engine.h"
#include "launcher/options.h"
#include "launcher/parallel_setup.h"
#include "launcher/run_config.h"
#include "model/glm_model.h"

namespace glmrt {

// --config, --weights, --load, --max-batch, --micro-batches, plus compute, parallel and --set.
void add_inference_options(po::options_description& desc);
// --quantization-bit-width (generate, serve, forward).
void add_quantization_option(po::options_description& desc);
// This rank's parameters, ready for ModelSource::load: full precision, or with the linear weights
// quantized as they are loaded when --quantization-bit-width is 4 or 8 (InputError otherwise;
// checked before anything is loaded). Prints the sizes on world rank 0 once loaded: call
// report_quantization after the load.
GlmParams allocate_inference_params(const po::variables_map& vm, const GlmConfig& config,
                                    const ComputeOptions& compute, const ParallelRuntime& rt);
int quantization_bits(const po::variables_map& vm);
void report_quantization(const GlmParams& params, const GlmConfig& config, const ParallelRuntime& rt,
                         const ComputeOptions& compute, const std::string& command);

// --strategy, --out-seq-length, --min-gen-length, --temperature, --top-k, --top-p, --seed,
// --num-beams, --length-penalty, --no-repeat-ngram-size, --deterministic.
void add_generation_options(po::options_description& desc);
// The flags' values over the released CLI's defaults; throws InputError naming the flag.
GenerationParams generation_params(const po::variables_map& vm);

struct InferenceSetup {
  RunConfig rc;
  ParallelRuntime rt;
  std::unique_ptr<GlmModel> model;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the config has no tokenizer section
  std::unique_ptr<GenerationEngine> engine;
};
// Reads the config, checks the weights or checkpoint exist and fit the model, builds the
// process groups, loads this rank's shard (resharding a checkpoint of any layout on load) and
// the engine. `command` names the command in messages ("generate", "serve").
InferenceSetup setup_inference(const po::variables_map& vm, const std::string& command);

}  // namespace glmrt
