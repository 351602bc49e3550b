#include "launcher/inference_setup.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "checkpoint/quantize.h"
#include "launcher/model_source.h"

namespace glmrt {

void add_inference_options(po::options_description& desc) {
  desc.add_options()
    ("config", po::value<std::string>()->required(), "model config (YAML)")
    ("weights", po::value<std::string>(), "full (TP=1) weights, safetensors")
    ("load", po::value<std::string>(), "or: the latest checkpoint in this folder (any layout)")
    ("max-batch", po::value<int64_t>()->default_value(16), "queries in flight at once (per data-parallel replica)")
    ("max-rows", po::value<int64_t>()->default_value(0),
     "KV cache rows (a beam query takes num_beams); 0 = max-batch (x num-beams with --strategy "
     "beam), at least num-beams")
    ("cache-length", po::value<int64_t>()->default_value(0),
     "tokens per KV cache row; 0 = the model's max_sequence_length")
    ("micro-batches", po::value<int>()->default_value(0),
     "pipeline micro-batches per decoding step; 0 = one per stage");
  add_quantization_option(desc);
  add_compute_options(desc);
  add_parallel_options(desc);
  add_set_option(desc);
}

void add_generation_options(po::options_description& desc) {
  const GenerationParams d;
  desc.add_options()
    ("strategy", po::value<std::string>()->default_value("sample"), "greedy, sample or beam")
    ("out-seq-length", po::value<int64_t>()->default_value(d.out_seq_length),
     "per blank: its context (with sop) plus the generated tokens never exceed this")
    ("min-gen-length", po::value<int64_t>()->default_value(d.min_gen_length),
     "no end token before this many generated tokens")
    ("temperature", po::value<double>()->default_value(d.temperature), "sampling temperature")
    ("top-k", po::value<int64_t>()->default_value(d.top_k), "sample among the k most likely (0 = off)")
    ("top-p", po::value<double>()->default_value(d.top_p), "nucleus sampling mass (0 = off)")
    ("seed", po::value<uint64_t>()->default_value(d.seed), "sampling seed")
    ("presence-penalty", po::value<double>()->default_value(d.presence_penalty),
     "greedy/sampling: lower the logit of every token already generated in the blank by this")
    ("frequency-penalty", po::value<double>()->default_value(d.frequency_penalty),
     "greedy/sampling: ... and by this times its count")
    ("logit-bias", po::value<std::string>()->default_value(""),
     "greedy/sampling: ID:BIAS[,ID:BIAS...] adds BIAS (-100..100) to token ID's logit")
    ("logprobs", po::value<int64_t>()->default_value(d.logprobs),
     "greedy/sampling with --json: each generated token's log-probability and the N most likely "
     "tokens' (0..5; -1 = off)")
    ("num-beams", po::value<int64_t>()->default_value(d.num_beams), "beam search: beams")
    ("length-penalty", po::value<double>()->default_value(d.length_penalty), "beam search: length penalty")
    ("no-repeat-ngram-size", po::value<int64_t>()->default_value(d.no_repeat_ngram_size),
     "beam search: n-grams that may not repeat (0 = off)")
    ("deterministic", po::bool_switch(), "beam search: take the best candidates instead of sampling them");
}

namespace {
// "ID:BIAS,ID:BIAS" -> pairs (ranges are checked by validate_params and the engine).
std::vector<std::pair<int32_t, double>> parse_logit_bias(const std::string& text) {
  std::vector<std::pair<int32_t, double>> out;
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, end - at);
    long long id = 0;
    double bias = 0;
    int used = 0;
    if (std::sscanf(item.c_str(), "%lld:%lf%n", &id, &bias, &used) != 2 ||
        used != static_cast<int>(item.size()) || id < 0 || id > INT32_MAX)
      throw InputError("--logit-bias: \"" + item + "\" is not ID:BIAS (a token id and a number), in \"" +
                       text + "\"");
    out.emplace_back(static_cast<int32_t>(id), bias);
    at = end + 1;
  }
  return out;
}
}  // namespace

void add_quantization_option(po::options_description& desc) {
  desc.add_options()
    ("quantization-bit-width", po::value<int>()->default_value(0),
     "weight-only quantization of the four linear weights of every layer as they are loaded: 8 "
     "or 4 bits (per-row fp16 scales of this rank's shard); 0 = off");
}

int quantization_bits(const po::variables_map& vm, const ModelSource& source) {
  const int bits = vm["quantization-bit-width"].as<int>();
  if (bits != 0 && bits != 4 && bits != 8)
    throw InputError("--quantization-bit-width must be 4 or 8 (or 0: off), got " + std::to_string(bits));
  const int saved = source.weight_bits();
  if (!saved) return bits;
  if (!vm["quantization-bit-width"].defaulted() && bits != saved)
    throw InputError("--quantization-bit-width " + std::to_string(bits) + ": " + source.path() +
                     " holds weights quantized to " + std::to_string(saved) + " bits (glmrt quantize); give " +
                     std::to_string(saved) + " or leave the flag out");
  return saved;
}

GlmParams allocate_inference_params(int bits, const GlmConfig& config, const ComputeOptions& compute,
                                    const ParallelRuntime& rt) {
  return bits ? allocate_quantized_params(config, compute.dtype, compute.device, rt.shard, bits)
              : GlmParams::allocate(config, compute.dtype, compute.device, rt.shard);
}

void report_quantization(const GlmParams& params, const GlmConfig& config, const ParallelRuntime& rt,
                         const ComputeOptions& compute, const ModelSource& source, const std::string& command) {
  if (!params.weight_bits() || !rt.is_world_root()) return;
  const double before = static_cast<double>(GlmParams::flat_numel(config, rt.shard)) * dtype_size(compute.dtype);
  std::fprintf(stderr, "glmrt %s: linear weights quantized to %d bits, %s (rank 0: %.1f MiB of parameters -> %.1f MiB)\n",
               command.c_str(), params.weight_bits(),
               source.weight_bits() ? "read pre-quantized from the checkpoint" : "as they were loaded",
               before / (1 << 20), static_cast<double>(params.nbytes()) / (1 << 20));
}

GenerationParams generation_params(const po::variables_map& vm) {
  GenerationParams p;
  p.strategy = parse_strategy(vm["strategy"].as<std::string>(), "--strategy");
  p.out_seq_length = vm["out-seq-length"].as<int64_t>();
  p.min_gen_length = vm["min-gen-length"].as<int64_t>();
  p.temperature = vm["temperature"].as<double>();
  p.top_k = vm["top-k"].as<int64_t>();
  p.top_p = vm["top-p"].as<double>();
  p.seed = vm["seed"].as<uint64_t>();
  p.presence_penalty = vm["presence-penalty"].as<double>();
  p.frequency_penalty = vm["frequency-penalty"].as<double>();
  p.logprobs = vm["logprobs"].as<int64_t>();
  p.logit_bias = parse_logit_bias(vm["logit-bias"].as<std::string>());
  p.num_beams = vm["num-beams"].as<int64_t>();
  p.length_penalty = vm["length-penalty"].as<double>();
  p.no_repeat_ngram_size = vm["no-repeat-ngram-size"].as<int64_t>();
  p.deterministic = vm["deterministic"].as<bool>();
  try {
    validate_params(p, "");
  } catch (const InputError& e) {
    // Name the flag, not the field.
    std::string m = e.what();
    for (char& c : m) if (c == '_') c = '-';
    throw InputError("--" + m);
  }
  return p;
}

InferenceSetup setup_inference(const po::variables_map& vm, const std::string& command) {
  const ComputeOptions compute = compute_options(vm);
  InferenceSetup s;
  s.rc = load_run_config(vm["config"].as<std::string>(), config_overrides(vm));
  const ModelSource source(vm, s.rc.model);
  const int bits = quantization_bits(vm, source);  // a bad width fails before anything is loaded
  if (!s.rc.tokenizer.model.empty())
    s.tokenizer = std::make_unique<Tokenizer>(s.rc.tokenizer.model, s.rc.model, s.rc.source);
  s.rt = setup_parallel(s.rc, vm, compute.device);
  // With quantization the linear weights are quantized as they are loaded, one tensor at a time.
  GlmParams params = allocate_inference_params(bits, s.rc.model, compute, s.rt);
  source.load(s.rc.model, params);
  report_quantization(params, s.rc.model, s.rt, compute, source, command);
  if (s.rt.is_world_root() && !source.note().empty())
    std::fprintf(stderr, "glmrt %s: %s\n", command.c_str(), source.note().c_str());
  s.model = std::make_unique<GlmModel>(s.rc.model, std::move(params), s.rt.tp);
  EngineOptions eo;
  eo.max_batch = vm["max-batch"].as<int64_t>();
  eo.max_rows = vm["max-rows"].as<int64_t>();
  eo.capacity = vm["cache-length"].as<int64_t>();
  eo.micro_batches = vm["micro-batches"].as<int>();
  if (eo.max_batch < 1) throw InputError("--max-batch must be at least 1");
  if (eo.max_rows < 0 || eo.capacity < 0 || eo.micro_batches < 0)
    throw InputError("--max-rows, --cache-length and --micro-batches must be >= 0");
  if (eo.max_rows == 0) eo.max_rows = default_cache_rows(eo.max_batch, generation_params(vm));
  const int64_t rows = eo.max_rows;
  const int64_t capacity = eo.capacity > 0 ? std::min(eo.capacity, s.rc.model.max_sequence_length)
                                           : s.rc.model.max_sequence_length;
  const int64_t cache_bytes = KvCache::bytes_for(s.rc.model, s.rt.shard, rows, capacity, compute.dtype);
  if (s.rt.is_world_root())
    std::fprintf(stderr, "glmrt %s: KV cache of %lld rows x %lld tokens: %.1f MiB on each rank of stage 0\n",
                 command.c_str(), static_cast<long long>(rows), static_cast<long long>(capacity),
                 static_cast<double>(cache_bytes) / (1 << 20));
  s.engine = std::make_unique<GenerationEngine>(*s.model, *s.rt.groups, eo);
  return s;
}

}  // namespace glmrt
