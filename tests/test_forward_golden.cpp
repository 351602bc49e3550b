// `glmrt forward` against the independent PyTorch reference (tests/reference/glm_reference.py):
// a tiny random GLM-130B-shaped model, plain/prefix rows, packed rows and long positions, in both
// RoPE table modes. Criterion: max |Δ| / max |ref| ≤ 1e-5 in fp32.
#include <filesystem>

#include "checkpoint/safetensors.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::source_path;

struct GoldenCase {
  std::string input, mode;
};

class ForwardGolden : public ::testing::TestWithParam<GoldenCase> {};

Tensor run_forward(const std::string& config, const std::string& input, const std::string& out_dir) {
  const std::string out = out_dir + "/logits.safetensors";
  auto r = testing::run_glmrt("forward --config " + config + " --weights " +
                              source_path("tests/golden/tiny_weights.safetensors") + " --input " +
                              input + " --output " + out + " --threads 1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return SafetensorsReader(out).tensor("logits").clone();
}

TEST_P(ForwardGolden, MatchesPyTorchReference) {
  const auto& c = GetParam();
  const std::string dir = testing::temp_dir("golden_" + c.input + "_" + c.mode);
  Tensor logits = run_forward(source_path("tests/golden/tiny_" + c.mode + ".yaml"),
                              source_path("tests/golden/forward_" + c.input + ".json"), dir);
  SafetensorsReader golden(
      source_path("tests/golden/forward_" + c.input + "_" + c.mode + ".logits.safetensors"));
  Tensor ref = golden.tensor("logits");
  ASSERT_EQ(logits.shape(), ref.shape());
  EXPECT_EQ(logits.dtype(), DType::F32);
  EXPECT_LE(testing::max_rel_diff(logits, ref), 1e-5);

  // The comparison is sharp enough to tell the two RoPE modes apart.
  const std::string other = c.mode == "fp16rope" ? "exactrope" : "fp16rope";
  SafetensorsReader other_golden(
      source_path("tests/golden/forward_" + c.input + "_" + other + ".logits.safetensors"));
  EXPECT_GT(testing::max_rel_diff(logits, other_golden.tensor("logits")), 1e-5);
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ForwardGolden,
    ::testing::Values(GoldenCase{"plain", "fp16rope"}, GoldenCase{"plain", "exactrope"},
                      GoldenCase{"packed", "fp16rope"}, GoldenCase{"packed", "exactrope"},
                      GoldenCase{"longpos", "fp16rope"}, GoldenCase{"longpos", "exactrope"}),
    [](const auto& info) { return info.param.input + "_" + info.param.mode; });

}  // namespace
}  // namespace glmrt
