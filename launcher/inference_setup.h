// What `glmrt generate` and `glmrt serve` share: the model source options (--config with
// --weights or --load), the generation flags, loading the model onto this rank's shard, the
// optional tokenizer and the engine.
#pragma once

#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "inference/engine.h"
#include "launcher/model_source.h"
#include "launcher/options.h"
#include "launcher/parallel_setup.h"
#include "launcher/run_config.h"
#include "model/glm_model.h"

namespace glmrt {

// --config, --weights, --load, --max-batch, --micro-batches, plus compute, parallel and --set.
void add_inference_options(po::options_description& desc);
// --quantization-bit-width (generate, serve, forward).
void add_quantization_option(po::options_description& desc);
// The bit width the model runs at (0: full precision): --quantization-bit-width (4, 8 or 0;
// InputError otherwise), or a pre-quantized checkpoint's own (glmrt quantize), which the flag,
// when given, must equal (InputError naming both).
int quantization_bits(const po::variables_map& vm, const ModelSource& source);
// This rank's parameters, ready for ModelSource::load: full precision (bits 0), or with the linear
// weights quantized as they are loaded (or taken as saved from a pre-quantized checkpoint). Call
// report_quantization after the load: it prints the sizes on world rank 0.
GlmParams allocate_inference_params(int bits, const GlmConfig& config, const ComputeOptions& compute,
                                    const ParallelRuntime& rt);
void report_quantization(const GlmParams& params, const GlmConfig& config, const ParallelRuntime& rt,
                         const ComputeOptions& compute, const ModelSource& source, const std::string& command);

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
