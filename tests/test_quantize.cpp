// Weight-only quantization (checkpoint/quantize.h, GLM130B.md §6) against the PyTorch reference
// (tests/reference/glm_quantize_reference.py; goldens in tests/golden/quantize/):
// - quantize_weight equals the reference bit for bit (values, INT4 packing, fp16 scales) on
//   crafted weights: exact .5 ties (to even), a zero row, an fp16-subnormal scale, F16 and BF16;
// - quantized parameters (allocate_quantized_params) quantize exactly the four linear weights as
//   the loader hands them over, never allocating them at full precision;
// - `glmrt generate --quantization-bit-width 8|4` answers as the reference's float64 model on the
//   dequantized weights, token for token: greedy [MASK] / [sMASK] / [gMASK] and beam search, for
//   tensor-parallel degrees 1 and 2 (the row-parallel layers' scales belong to each shard), on a
//   single rank, under a pipeline of two stages and on (2, 2).
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/quantize.h"
#include "checkpoint/safetensors.h"
#include "kernels/error.h"
#include "kernels/half.h"
#include "kernels/ops.h"
#include "model/init.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using nlohmann::json;
using testing::ids_csv;
using testing::source_path;

std::string golden(const std::string& file) { return source_path("tests/golden/quantize/" + file); }

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

TEST(Quantize, MatchesPyTorchReferenceBitForBit) {
  const SafetensorsReader file(golden("quantize_cases.safetensors"));
  int checked = 0;
  for (const std::string name : {"f32", "f32_ties4", "f16", "bf16"}) {
    const Tensor w = file.tensor(name + ".w");
    for (const int bits : {8, 4}) {
      SCOPED_TRACE(name + ", " + std::to_string(bits) + " bits");
      const QuantizedTensor q = quantize_weight(w, bits, name);
      const Tensor want_q = file.tensor(name + ".q" + std::to_string(bits));
      const Tensor want_s = file.tensor(name + ".scale" + std::to_string(bits));
      EXPECT_TRUE(same_bytes(q.values, want_q)) << "values " << q.values.str() << " vs " << want_q.str();
      EXPECT_TRUE(same_bytes(q.scale, want_s)) << "scales " << q.scale.str() << " vs " << want_s.str();
      ++checked;
    }
  }
  EXPECT_EQ(checked, 8);
}

// The same crafted rows repeated along the columns (and 3 more columns of the row's first values)
// take the vectorised row loops (8 and 32 values at a time, then a scalar tail): the scales are
// unchanged (same absmax) and every value equals the reference's for its source column.
TEST(Quantize, WideRowsMatchThePyTorchReferenceToo) {
  const SafetensorsReader file(golden("quantize_cases.safetensors"));
  for (const std::string name : {"f32", "f32_ties4", "f16", "bf16"}) {
    const Tensor w = file.tensor(name + ".w");
    const int64_t rows = w.dim(0), cols = w.dim(1), reps = 5, wide = reps * cols + 4;
    const size_t es = dtype_size(w.dtype());
    Tensor t = Tensor::empty({rows, wide}, w.dtype());
    auto source_col = [&](int64_t c) { return c % cols; };
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < wide; ++c)
        std::memcpy(static_cast<char*>(t.data()) + (r * wide + c) * es,
                    static_cast<const char*>(w.data()) + (r * cols + source_col(c)) * es, es);
    for (const int bits : {8, 4}) {
      SCOPED_TRACE(name + ", " + std::to_string(bits) + " bits");
      const QuantizedTensor q = quantize_weight(t, bits, name);
      EXPECT_TRUE(same_bytes(q.scale, file.tensor(name + ".scale" + std::to_string(bits))));
      const Tensor got = dequantize_weight(q), want = dequantize_weight(
          {file.tensor(name + ".q" + std::to_string(bits)), file.tensor(name + ".scale" + std::to_string(bits)), bits});
      int64_t mismatches = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < wide; ++c)
          mismatches += got.data_as<float>()[r * wide + c] != want.data_as<float>()[r * cols + source_col(c)];
      EXPECT_EQ(mismatches, 0);
    }
  }
}

TEST(Quantize, DequantizedWeightIsCloseAndPackingIsHighNibbleFirst) {
  // Row 0 = [1, -2, 3, -7, 7, 0] · scale 1 (max 7: 4-bit scale exactly 1).
  const Tensor w = Tensor::from_floats({1, -2, 3, -7, 7, 0}, {1, 6});
  const QuantizedTensor q4 = quantize_weight(w, 4, "w");
  ASSERT_EQ(q4.values.shape(), (Shape{1, 3}));
  const auto* b = q4.values.data_as<int8_t>();
  EXPECT_EQ(static_cast<uint8_t>(b[0]), 0x1E);  // 1 high, -2 (0xE) low
  EXPECT_EQ(static_cast<uint8_t>(b[1]), 0x39);  // 3, -7 (0x9)
  EXPECT_EQ(static_cast<uint8_t>(b[2]), 0x70);  // 7, 0
  EXPECT_EQ(testing::max_rel_diff(dequantize_weight(q4), w), 0.0);
  // Random weights: |dequantized - w| ≤ scale / 2 per row.
  const Tensor r = testing::random_tensor({7, 40}, 11);
  for (const int bits : {8, 4}) {
    const QuantizedTensor q = quantize_weight(r, bits, "r");
    const Tensor d = dequantize_weight(q);
    for (int64_t i = 0; i < 7; ++i) {
      const float s = f16_to_float(static_cast<const f16*>(q.scale.data())[i]);
      for (int64_t c = 0; c < 40; ++c)
        EXPECT_LE(std::abs(d.item(i * 40 + c) - r.item(i * 40 + c)), s * 0.5 + 1e-7) << bits << " bits";
    }
  }
}

TEST(Quantize, RefusesWhatItCannotQuantize) {
  const auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const Tensor w = testing::random_tensor({4, 6}, 3);
  EXPECT_NE(message([&] { quantize_weight(w, 3, "layer.w"); }).find("bit width must be 4 or 8"), std::string::npos);
  EXPECT_NE(message([&] { quantize_weight(testing::random_tensor({4, 5}, 3), 4, "layer.w"); })
                .find("5 columns"),
            std::string::npos);
  Tensor bad = w.to(DType::F32);
  bad.data_as<float>()[7] = NAN;
  const std::string m = message([&] { quantize_weight(bad, 8, "layer.w"); });
  EXPECT_NE(m.find("layer.w"), std::string::npos) << m;
  EXPECT_NE(m.find("row 1, column 1"), std::string::npos) << m;
  EXPECT_NE(message([&] { quantize_weight(testing::random_tensor({6}, 3), 8, "v"); }).find("2-D"),
            std::string::npos);
}

TEST(Quantize, QuantizedParamsQuantizeTheFourLinearWeightsAsTheyAreLoaded) {
  GlmConfig c = testing::small_glm_config(2);
  GlmParams full = GlmParams::allocate(c, DType::F32, Device::cpu());
  init_glm_params(full, c, 5);
  GlmParams p = allocate_quantized_params(c, DType::F32, Device::cpu(), ModelShard::whole(), 8);
  EXPECT_EQ(p.weight_bits(), 8);
  // Only the other parameters are allocated at full precision.
  EXPECT_LT(p.flat().nbytes(), full.flat().nbytes() / 2);
  for (size_t i = 0; i < p.size(); ++i) p.assign(i, full.tensor(i));
  EXPECT_LT(p.nbytes(), full.nbytes() / 2);
  int quantized = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const std::string& name = p.specs()[i].name;
    const Tensor* scale = p.find_scale(name);
    if (scale) {
      ++quantized;
      EXPECT_EQ(p.offset(i), -1) << name;
      EXPECT_EQ(p.tensor(i).dtype(), DType::I8) << name;
      EXPECT_EQ(scale->dtype(), DType::F16) << name;
      const QuantizedTensor want = quantize_weight(full.tensor(i), 8, name);
      EXPECT_TRUE(same_bytes(p.tensor(i), want.values)) << name;
      EXPECT_TRUE(same_bytes(*scale, want.scale)) << name;
    } else {
      EXPECT_TRUE(same_bytes(p.tensor(i), full.tensor(i))) << name;
    }
  }
  EXPECT_EQ(quantized, 4 * 2);
  ASSERT_EQ(p.layers.size(), 2u);
  EXPECT_EQ(p.layers[1].weight_bits, 8);
  const std::string qkv1 = "transformer.layers.1.attention.query_key_value.weight";
  EXPECT_EQ(p.layers[1].qkv_weight.data(), p.find(qkv1)->data());  // the layer's views
  EXPECT_EQ(p.layers[1].qkv_weight_scale.data(), p.find_scale(qkv1)->data());
  EXPECT_TRUE(p.layers[1].fourh_to_h_weight_scale.defined());
  EXPECT_EQ(p.layers[1].qkv_bias.dtype(), DType::F32);
  EXPECT_EQ(p.word_embeddings.dtype(), DType::F32);
  EXPECT_THROW(p.assign(1, full.tensor(0)), Error);  // the embedding for a LayerNorm weight
}

// --- generation against the reference --------------------------------------------------------

struct QCase {
  std::string name, args;
  int bits = 0, tp = 1;
  std::vector<int32_t> prompt_ids, output_ids;
  std::vector<std::vector<int32_t>> spans;
};

std::string load_error;
const std::vector<QCase>& cases() {
  static const std::vector<QCase> all = [] {
    std::vector<QCase> out;
    try {
      std::ifstream in(golden("cases.json"));
      if (!in) throw std::runtime_error("cannot open tests/golden/quantize/cases.json");
      for (const auto& c : json::parse(in)) {
        QCase q;
        q.name = c.at("name").get<std::string>();
        q.args = c.at("args").get<std::string>();
        q.bits = c.at("bits").get<int>();
        q.tp = c.at("tp").get<int>();
        q.prompt_ids = c.at("prompt_ids").get<std::vector<int32_t>>();
        q.output_ids = c.at("output_ids").get<std::vector<int32_t>>();
        q.spans = c.at("spans").get<std::vector<std::vector<int32_t>>>();
        out.push_back(std::move(q));
      }
    } catch (const std::exception& e) {
      load_error = e.what();
      out.clear();
    }
    return out;
  }();
  return all;
}

TEST(QuantizedGenerateCases, Load) {
  ASSERT_TRUE(load_error.empty()) << load_error;
  EXPECT_EQ(cases().size(), 16u);
}

// (pipeline stages) for each case: its own TP degree on one stage and on two.
class QuantizedGenerate : public ::testing::TestWithParam<std::tuple<size_t, int>> {};

TEST_P(QuantizedGenerate, MatchesPyTorchReference) {
  ASSERT_TRUE(load_error.empty()) << load_error;
  const QCase& c = cases()[std::get<0>(GetParam())];
  const int pipeline = std::get<1>(GetParam());
  const int ranks = c.tp * pipeline;
  const std::string out = testing::temp_dir("quantized_generate_" + c.name + "_p" + std::to_string(pipeline)) +
                          "/answer.jsonl";
  const std::string launch =
      ranks == 1 ? std::string("OMPI_MCA_pml=ob1 ") + GLMRT_BINARY
                 : "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                   "OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_pml=ob1 OPENBLAS_NUM_THREADS=1 "
                   "OMP_NUM_THREADS=1 timeout 300 mpiexec -n " +
                       std::to_string(ranks) + " --oversubscribe " + GLMRT_BINARY;
  const auto r = testing::run_command(
      launch + " generate --config " + source_path("tests/golden/generate/tiny.yaml") + " --weights " +
      source_path("tests/golden/generate/weights.safetensors") + " --json --threads 1 --prompt-ids " +
      ids_csv(c.prompt_ids) + " " + c.args + " --quantization-bit-width " + std::to_string(c.bits) +
      " --tensor " + std::to_string(c.tp) + " --pipeline " + std::to_string(pipeline) + " --output " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("quantized to " + std::to_string(c.bits) + " bits"), std::string::npos) << r.output;
  std::ifstream in(out);
  std::string line;
  ASSERT_TRUE(std::getline(in, line)) << r.output;
  const json got = json::parse(line);
  EXPECT_EQ(got.at("output_ids").get<std::vector<int32_t>>(), c.output_ids) << got.dump();
  EXPECT_EQ(got.at("spans").get<std::vector<std::vector<int32_t>>>(), c.spans) << got.dump();
}

std::vector<std::tuple<size_t, int>> runs() {
  std::vector<std::tuple<size_t, int>> out;
  for (size_t i = 0; i < cases().size(); ++i)
    for (const int pipeline : {1, 2}) out.emplace_back(i, pipeline);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Cases, QuantizedGenerate, ::testing::ValuesIn(runs()), [](const auto& info) {
  return cases()[std::get<0>(info.param)].name + "_p" + std::to_string(std::get<1>(info.param));
});
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(QuantizedGenerate);

TEST(QuantizedGenerate, RefusesABadBitWidthAndAnOddShardForFourBits) {
  const std::string base = "generate --config " + source_path("tests/golden/generate/tiny.yaml") +
                           " --weights " + source_path("tests/golden/generate/weights.safetensors") +
                           " --json --threads 1 --prompt-ids 5,6,7,251 --strategy greedy";
  auto r = testing::run_glmrt(base + " --quantization-bit-width 3");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--quantization-bit-width must be 4 or 8"), std::string::npos) << r.output;
  // FFN width 50 on two tensor ranks: dense_4h_to_h's shards are [64, 25], which 4 bits cannot
  // pack two per byte; 8 bits can.
  const std::string dir = testing::temp_dir("quantize_odd");
  testing::edited_copy(source_path("tests/golden/generate/tiny.yaml"), "ffn_hidden_size: 48", "ffn_hidden_size: 50",
                       dir + "/odd.yaml");
  r = testing::run_glmrt("init --config " + dir + "/odd.yaml --output " + dir + "/odd.safetensors");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string odd = std::string("env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                                      "OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_pml=ob1 timeout 120 "
                                      "mpiexec -n 2 --oversubscribe ") +
                          GLMRT_BINARY + " generate --config " + dir + "/odd.yaml --weights " + dir +
                          "/odd.safetensors --json --threads 1 --prompt-ids 5,6,7,251 --strategy greedy "
                          "--out-seq-length 12 --tensor 2 --quantization-bit-width ";
  r = testing::run_command(odd + "4");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("mlp.dense_4h_to_h.weight to 4 bits: 25 columns"), std::string::npos) << r.output;
  r = testing::run_command(odd + "8");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

// --- glmrt forward with quantized weights against the reference's logits --------------------

struct ForwardRun {
  int bits, tensor, pipeline;
};

class QuantizedForward : public ::testing::TestWithParam<ForwardRun> {};

TEST_P(QuantizedForward, MatchesPyTorchReference) {
  const ForwardRun f = GetParam();
  const int ranks = f.tensor * f.pipeline;
  const std::string dir = testing::temp_dir("quantized_forward_" + std::to_string(f.bits) + "_" +
                                            std::to_string(f.tensor) + std::to_string(f.pipeline));
  const std::string launch =
      ranks == 1 ? std::string("OMPI_MCA_pml=ob1 ") + GLMRT_BINARY
                 : "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                   "OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_pml=ob1 OMP_NUM_THREADS=1 timeout 300 "
                   "mpiexec -n " + std::to_string(ranks) + " --oversubscribe " + GLMRT_BINARY;
  const auto r = testing::run_command(
      launch + " forward --config " + source_path("tests/golden/generate/tiny.yaml") + " --weights " +
      source_path("tests/golden/generate/weights.safetensors") + " --input " +
      source_path("tests/golden/forward_plain.json") + " --output " + dir + "/logits.safetensors --threads 1" +
      " --quantization-bit-width " + std::to_string(f.bits) + " --tensor " + std::to_string(f.tensor) +
      " --pipeline " + std::to_string(f.pipeline));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensor logits = SafetensorsReader(dir + "/logits.safetensors").tensor("logits");
  const auto golden_logits = [&](int bits, int tp) {
    return SafetensorsReader(golden("forward_int" + std::to_string(bits) + "_tp" + std::to_string(tp) +
                                    ".logits.safetensors"))
        .tensor("logits");
  };
  EXPECT_LE(testing::max_rel_diff(logits, golden_logits(f.bits, f.tensor)), 1e-5);
  // The goldens tell the bit widths and the TP degrees apart.
  EXPECT_GT(testing::max_rel_diff(logits, golden_logits(12 - f.bits, f.tensor)), 1e-3);
  EXPECT_GT(testing::max_rel_diff(logits, golden_logits(f.bits, 3 - f.tensor)), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(Layouts, QuantizedForward,
                         ::testing::Values(ForwardRun{8, 1, 1}, ForwardRun{4, 1, 1}, ForwardRun{8, 2, 1},
                                           ForwardRun{4, 2, 2}, ForwardRun{4, 1, 2}),
                         [](const auto& info) {
                           const ForwardRun f = info.param;
                           return "int" + std::to_string(f.bits) + "_t" + std::to_string(f.tensor) + "p" +
                                  std::to_string(f.pipeline);
                         });

}  // namespace
}  // namespace glmrt
