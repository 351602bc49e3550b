// Pre-quantized checkpoints (`glmrt quantize`, checkpoint/quantize.h shard_quantized):
// - every tensor of every file is the released quantization of its tensor-parallel shard, checked
//   by the PyTorch reference (glm_quantize_reference.py --check-checkpoint) for F32, F16 and BF16
//   sources, 8 and 4 bits, on several layouts;
// - generate and forward from such a checkpoint answer as the reference's quantized model
//   (tests/golden/quantize): quantized for TP c, the model is that of the reference at TP c on
//   every layout whose TP degree is a multiple of c and on any pipeline split;
// - what cannot load is refused by name: a TP degree that is not a multiple, a contradicting
//   --quantization-bit-width, training, resharding, quantizing twice, 4 bits on odd shards.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/quantize.h"
#include "checkpoint/safetensors.h"
#include "model/parameters.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using nlohmann::json;
using testing::ids_csv;
using testing::source_path;

const std::string kMpi =
    "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 "
    "OMPI_MCA_pml=ob1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 timeout 300 mpiexec --oversubscribe -n ";

std::string launch(int ranks) {
  return ranks == 1 ? std::string("OMPI_MCA_pml=ob1 ") + GLMRT_BINARY
                    : kMpi + std::to_string(ranks) + " " + GLMRT_BINARY;
}

std::string gen_config() { return source_path("tests/golden/generate/tiny.yaml"); }
std::string gen_weights() { return source_path("tests/golden/generate/weights.safetensors"); }

// glmrt quantize into a fresh folder; returns the folder.
std::string quantize(const std::string& name, const std::string& config, const std::string& weights,
                     int bits, int tensor, int pipeline, const std::string& extra = "") {
  const std::string dir = testing::temp_dir("qckpt_" + name) + "/q";
  const auto r = testing::run_glmrt("quantize --config " + config + " --weights " + weights + " --to " + dir +
                                    " --quantization-bit-width " + std::to_string(bits) + " --tensor " +
                                    std::to_string(tensor) + " --pipeline " + std::to_string(pipeline) + extra);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(std::to_string(bits) + "-bit linear weights"), std::string::npos) << r.output;
  return dir;
}

// --- the files against the PyTorch reference -------------------------------------------------

struct FileCase {
  std::string name, dtype;  // dtype of the full weights quantized ("" = the golden F32 file)
  int bits, tensor, pipeline;
};

class QuantizedCheckpointFiles : public ::testing::TestWithParam<FileCase> {};

TEST_P(QuantizedCheckpointFiles, AreTheReleasedQuantizationOfEveryShard) {
  const FileCase c = GetParam();
  const std::string config = source_path("tests/golden/train_config.yaml");
  std::string weights = source_path("tests/golden/tiny_weights.safetensors");
  if (!c.dtype.empty()) {
    weights = testing::temp_dir("qckpt_src_" + c.name) + "/w.safetensors";
    const auto r = testing::run_glmrt("init --config " + config + " --output " + weights + " --dtype " + c.dtype);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const std::string dir = quantize(c.name, config, weights, c.bits, c.tensor, c.pipeline);
  const std::string iter = dir + "/iter_0000000";
  const json manifest = json::parse(std::ifstream(iter + "/manifest.json"));
  EXPECT_EQ(manifest.at("quantization_bit_width"), c.bits);
  EXPECT_EQ(manifest.at("layout").at("tensor"), c.tensor);
  // Weights only: one model file per rank, no optimizer state.
  EXPECT_EQ(manifest.at("files").size(), static_cast<size_t>(c.tensor * c.pipeline));
  for (const auto& e : std::filesystem::directory_iterator(iter))
    EXPECT_EQ(e.path().filename().string().rfind("optim_", 0), std::string::npos) << e.path();
  // Stored dtypes: I8 values (4 bits: half the columns), F16 scales, the rest as the source.
  const SafetensorsReader f(iter + "/model_tp0_pp0.safetensors");
  const SafetensorsEntry* qkv = f.find("transformer.layers.0.attention.query_key_value.weight");
  const SafetensorsEntry* scale = f.find("transformer.layers.0.attention.query_key_value.weight_scale");
  ASSERT_TRUE(qkv && scale);
  EXPECT_EQ(qkv->dtype, DType::I8);
  EXPECT_EQ(qkv->shape, (Shape{192 / c.tensor, c.bits == 4 ? 32 : 64}));
  EXPECT_EQ(scale->dtype, DType::F16);
  EXPECT_EQ(scale->shape, (Shape{192 / c.tensor}));
  const DType source = c.dtype == "f16" ? DType::F16 : c.dtype == "bf16" ? DType::BF16 : DType::F32;
  EXPECT_EQ(f.find("transformer.word_embeddings.weight")->dtype, source);
  // Every tensor against the reference's quantization of the released shard.
  const auto r = testing::run_command("/usr/bin/python3 " + source_path("tests/reference/glm_quantize_reference.py") +
                                      " --check-checkpoint " + dir + " --weights " + weights);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("tensors match the released " + std::to_string(c.bits) + "-bit quantization"),
            std::string::npos)
      << r.output;
}

INSTANTIATE_TEST_SUITE_P(Sources, QuantizedCheckpointFiles,
                         ::testing::Values(FileCase{"f32_int8_t2p2", "", 8, 2, 2},
                                           FileCase{"f32_int4_t1p1", "", 4, 1, 1},
                                           FileCase{"f16_int4_t2p1", "f16", 4, 2, 1},
                                           FileCase{"bf16_int8_t1p2", "bf16", 8, 1, 2}),
                         [](const auto& info) { return info.param.name; });

// --- generation and logits from a quantized checkpoint ---------------------------------------

struct QCase {
  std::string name, args;
  int bits = 0, tp = 0;
  std::vector<int32_t> prompt_ids, output_ids;
};

std::vector<QCase> golden_cases() {
  std::vector<QCase> out;
  for (const json& e : json::parse(std::ifstream(source_path("tests/golden/quantize/cases.json"))))
    out.push_back({e.at("name"), e.at("args"), e.at("bits"), e.at("tp"), e.at("prompt_ids"), e.at("output_ids")});
  return out;
}

std::vector<int32_t> generate(const std::string& source, const QCase& c, int tensor, int pipeline,
                              const std::string& tag) {
  const std::string out = testing::temp_dir("qckpt_gen_" + tag) + "/answer.jsonl";
  const auto r = testing::run_command(launch(tensor * pipeline) + " generate --config " + gen_config() + " " +
                                      source + " --json --threads 1 --prompt-ids " + ids_csv(c.prompt_ids) +
                                      " " + c.args + " --tensor " + std::to_string(tensor) + " --pipeline " +
                                      std::to_string(pipeline) + " --output " + out);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(out);
  std::string line;
  if (!std::getline(in, line)) return {};
  return json::parse(line).at("output_ids").get<std::vector<int32_t>>();
}

// A case quantized for its own TP degree c, generated on layouts whose TP is c or 2c: the answer
// is the reference model quantized at TP c (cases.json), whatever the layout.
TEST(QuantizedCheckpoint, GeneratesTheReferenceModelOnEveryLayout) {
  const std::vector<QCase> cases = golden_cases();
  ASSERT_EQ(cases.size(), 16u);
  struct Run {
    std::string name;
    int tensor, pipeline;
  };
  const std::vector<std::pair<std::string, std::vector<Run>>> plan = {
      {"greedy_mask2_int4_tp1", {{"t1p1", 1, 1}, {"t2p1", 2, 1}, {"t2p2", 2, 2}}},
      {"beam_gmask_int8_tp1", {{"t2p1", 2, 1}}},
      {"greedy_smask_int8_tp2", {{"t2p2", 2, 2}}},
      {"beam_gmask_int4_tp2", {{"t2p1", 2, 1}}},
  };
  for (const auto& [name, runs] : plan) {
    const auto it = std::find_if(cases.begin(), cases.end(), [&](const QCase& c) { return c.name == name; });
    ASSERT_NE(it, cases.end()) << name;
    const std::string dir = quantize(name, gen_config(), gen_weights(), it->bits, it->tp, 1);
    for (const Run& run : runs) {
      SCOPED_TRACE(name + " on " + run.name);
      EXPECT_EQ(generate("--load " + dir, *it, run.tensor, run.pipeline, name + run.name), it->output_ids);
    }
  }
  // The TP-1 answer differs from the TP-2 one for this prompt: the TP-1 file on two tensor ranks
  // is the TP-1 model, not a re-quantization for TP 2.
  const auto tp2 = std::find_if(cases.begin(), cases.end(), [](const QCase& c) { return c.name == "greedy_mask2_int4_tp2"; });
  const auto tp1 = std::find_if(cases.begin(), cases.end(), [](const QCase& c) { return c.name == "greedy_mask2_int4_tp1"; });
  ASSERT_TRUE(tp1 != cases.end() && tp2 != cases.end());
  EXPECT_EQ(tp1->prompt_ids, tp2->prompt_ids);
  EXPECT_NE(tp1->output_ids, tp2->output_ids);
}

TEST(QuantizedCheckpoint, ForwardLogitsMatchTheReference) {
  for (const int bits : {8, 4}) {
    SCOPED_TRACE(std::to_string(bits) + " bits");
    const std::string dir = quantize("forward" + std::to_string(bits), gen_config(), gen_weights(), bits, 2, 2);
    const std::string out = testing::temp_dir("qckpt_forward_out" + std::to_string(bits)) + "/logits.safetensors";
    const auto r = testing::run_command(launch(4) + " forward --config " + gen_config() + " --load " + dir +
                                        " --input " + source_path("tests/golden/forward_plain.json") +
                                        " --output " + out + " --threads 1 --tensor 2 --pipeline 2");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("quantized to " + std::to_string(bits) + " bits, read pre-quantized from the checkpoint"),
              std::string::npos) << r.output;
    const Tensor logits = SafetensorsReader(out).tensor("logits");
    const Tensor want = SafetensorsReader(source_path("tests/golden/quantize/forward_int" + std::to_string(bits) +
                                                      "_tp2.logits.safetensors"))
                            .tensor("logits");
    EXPECT_LE(testing::max_rel_diff(logits, want), 1e-5);
  }
}

// --- refusals -----------------------------------------------------------------------------------

TEST(QuantizedCheckpoint, RefusesWhatItCannotLoadByName) {
  const std::string dir = quantize("refusals", gen_config(), gen_weights(), 8, 2, 1);
  const std::string gen = "generate --config " + gen_config() + " --load " + dir +
                          " --threads 1 --prompt-ids 5,6,7,251 --strategy greedy --out-seq-length 12";
  // Its row-parallel scales belong to TP-2 shards: one tensor rank cannot hold them.
  auto r = testing::run_glmrt(gen);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("holds weights quantized for tensor-parallel degree 2"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("multiple of 2, not 1"), std::string::npos) << r.output;
  // A bit width that contradicts the checkpoint's (0 included: it holds no full-precision weights).
  for (const std::string bits : {"4", "0"}) {
    r = testing::run_glmrt(gen + " --tensor 2 --quantization-bit-width " + bits);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.output.find("--quantization-bit-width " + bits + ": " + dir), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("holds weights quantized to 8 bits"), std::string::npos) << r.output;
  }
  // Training, resharding and quantizing again need full-precision weights.
  r = testing::run_glmrt("train --config " + source_path("tests/golden/train_config.yaml") + " --load " +
                         quantize("refusals_train", source_path("tests/golden/train_config.yaml"),
                                  source_path("tests/golden/tiny_weights.safetensors"), 8, 1, 1));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("is a weight-only checkpoint quantized to 8 bits"), std::string::npos) << r.output;
  const std::string other = testing::temp_dir("qckpt_refusals_out") + "/x";
  r = testing::run_glmrt("reshard --config " + gen_config() + " --from " + dir + " --to " + other +
                         " --tensor 1 --pipeline 1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("reshard the full-precision checkpoint and quantize it again"), std::string::npos)
      << r.output;
  r = testing::run_glmrt("quantize --config " + gen_config() + " --from " + dir + " --to " + other +
                         " --quantization-bit-width 4");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("is already quantized (8 bits)"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(other));
  // A full weight file is never quantized: I8 tensors there are refused with a pointer to --load.
  const std::string tp1 = quantize("refusals_tp1", gen_config(), gen_weights(), 8, 1, 1);
  r = testing::run_glmrt("generate --config " + gen_config() + " --weights " + tp1 +
                         "/iter_0000000/model_tp0_pp0.safetensors --prompt-ids 5,6,7,251");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("load it with --load"), std::string::npos) << r.output;
}

TEST(QuantizedCheckpoint, QuantizeChecksItsFlagsBeforeWritingAnything) {
  const std::string base = testing::temp_dir("qckpt_flags");
  const std::string q = "quantize --config " + gen_config() + " --weights " + gen_weights() + " --to " + base + "/out";
  // One process writes the folder: several ranks would all write the same files.
  auto r = testing::run_command(launch(2) + " " + q + " --quantization-bit-width 8");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("glmrt quantize is one offline process"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("this job has 2 ranks"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(base + "/out"));
  r = testing::run_glmrt(q + " --quantization-bit-width 3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--quantization-bit-width must be 4 or 8, got 3"), std::string::npos) << r.output;
  r = testing::run_glmrt(q + " --quantization-bit-width 8 --tensor 3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--tensor 3"), std::string::npos) << r.output;
  // dense_4h_to_h of an FFN width 50 on two ranks: shards of 25 columns, which 4 bits cannot pack.
  testing::edited_copy(gen_config(), "ffn_hidden_size: 48", "ffn_hidden_size: 50", base + "/odd.yaml");
  r = testing::run_glmrt("init --config " + base + "/odd.yaml --output " + base + "/odd.safetensors");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = testing::run_glmrt("quantize --config " + base + "/odd.yaml --weights " + base + "/odd.safetensors --to " +
                         base + "/out --quantization-bit-width 4 --tensor 2");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("mlp.dense_4h_to_h.weight has 25 columns per rank"), std::string::npos) << r.output;
  // Weights that do not fit the config are refused by tensor.
  r = testing::run_glmrt("quantize --config " + base + "/odd.yaml --weights " + gen_weights() + " --to " + base +
                         "/out --quantization-bit-width 8");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("weights do not match the model config"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(base + "/out"));
}

// A weight that cannot be quantized is found only while writing (here a NaN in the last layer):
// the error names the tensor, the row and the column, and no folder is left behind.
TEST(QuantizedCheckpoint, AFailureWhileWritingLeavesNothing) {
  const std::string dir = testing::temp_dir("qckpt_nan");
  const SafetensorsReader source(gen_weights());
  NamedTensors tensors;
  for (const SafetensorsEntry& e : source.entries()) tensors.emplace_back(e.name, source.tensor(e.name).clone());
  const std::string bad = "transformer.layers.1.mlp.dense_4h_to_h.weight";
  for (auto& [name, t] : tensors)
    if (name == bad) t.data_as<float>()[3 * t.dim(1) + 5] = std::nanf("");
  write_safetensors(dir + "/nan.safetensors", tensors);
  const auto r = testing::run_glmrt("quantize --config " + gen_config() + " --weights " + dir +
                                    "/nan.safetensors --to " + dir + "/out --quantization-bit-width 8 --pipeline 2");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("quantization of " + bad + ": row 3, column 5 holds nan (not finite)"), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir + "/out"));
}

// shard_quantized directly: splitting a row-parallel weight's saved shard keeps its scales, so
// values · scale of the new shards are the columns of the saved weight.
TEST(QuantizedCheckpoint, ShardingAColumnSplitWeightKeepsItsScales) {
  const GlmConfig config = testing::small_glm_config(1);  // h 32: attention.dense [32, 32]
  ParamSpec dense;
  for (const ParamSpec& s : glm_param_specs(config))
    if (s.name == "transformer.layers.0.attention.dense.weight") dense = s;
  ASSERT_EQ(dense.rule, ShardRule::Columns);
  std::vector<float> values(32 * 32);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>((static_cast<int>(i) * 37) % 19) - 9.0f;
  const Tensor w = Tensor::from_floats(values, {32, 32});
  for (const int bits : {8, 4}) {
    SCOPED_TRACE(std::to_string(bits) + " bits");
    const QuantizedTensor saved = quantize_weight(w, bits, dense.name);  // saved at TP 1
    const Tensor full = dequantize_weight(saved);
    for (int rank = 0; rank < 2; ++rank) {
      const QuantizedTensor q = shard_quantized([&](int) { return saved; }, 1, bits, dense, rank, 2);
      const Tensor got = dequantize_weight(q);
      const Tensor want = shard_tensor(full, ShardRule::Columns, rank, 2);
      EXPECT_EQ(testing::max_rel_diff(got, want), 0.0);
    }
    // TP 4 of a TP-2 save: ranks 0-1 within shard 0, 2-3 within shard 1.
    const QuantizedTensor s0 = quantize_weight(shard_tensor(w, ShardRule::Columns, 0, 2), bits, dense.name);
    const QuantizedTensor s1 = quantize_weight(shard_tensor(w, ShardRule::Columns, 1, 2), bits, dense.name);
    const auto piece = [&](int k) { return k == 0 ? s0 : s1; };
    const Tensor whole1 = dequantize_weight(s1);
    const QuantizedTensor r3 = shard_quantized(piece, 2, bits, dense, 3, 4);
    EXPECT_EQ(testing::max_rel_diff(dequantize_weight(r3), shard_tensor(whole1, ShardRule::Columns, 1, 2)), 0.0);
    EXPECT_THROW(shard_quantized(piece, 2, bits, dense, 0, 3), CheckpointError);
  }
}

}  // namespace
}  // namespace glmrt
