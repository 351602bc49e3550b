// Training against the independent PyTorch reference (tests/reference/glm_train_reference.py):
// 10 steps of a tiny GLM with gradient accumulation, weight decay, clipping (active on some
// steps), EGS α = 0.1, warm-up and cosine decay. Losses ≤ 1e-5 relative per step; step-1
// gradients ≤ 1e-4 relative per tensor; parameters after 1 and 10 steps ≤ 1e-4.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/full_weights.h"
#include "launcher/run_config.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace glmrt {
namespace {

using testing::source_path;

nlohmann::json golden_trajectory() {
  std::ifstream in(source_path("tests/golden/train_trajectory.json"));
  return nlohmann::json::parse(in)["steps"];
}

// max |Δ| / max |ref| per tensor, the worst over all parameters.
void expect_params_match(const GlmParams& got, const std::string& golden_file, double tol) {
  SafetensorsReader golden(source_path(golden_file));
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < got.size(); ++i) {
    const std::string& name = got.specs()[i].name;
    const double d = testing::max_rel_diff(got.tensor(i), golden.tensor(name));
    if (d > worst) worst = d, worst_name = name;
  }
  EXPECT_LE(worst, tol) << golden_file << ": worst tensor " << worst_name;
}

struct Fixture {
  RunConfig rc = load_run_config(source_path("tests/golden/train_config.yaml"));
  std::unique_ptr<GlmModel> model;
  std::unique_ptr<Trainer> trainer;
  Fixture() {
    GlmParams params = GlmParams::allocate(rc.model, DType::F32, Device::cpu());
    load_full_weights(SafetensorsReader(source_path("tests/golden/tiny_weights.safetensors")), rc.model, params);
    model = std::make_unique<GlmModel>(rc.model, std::move(params));
    trainer = std::make_unique<Trainer>(*model, rc.train, rc.optimizer,
                                        read_samples_file(rc.data.samples, rc.model));
  }
};

TEST(TrainGolden, StepOneGradientsAndParameters) {
  Fixture f;
  const nlohmann::json ref = golden_trajectory();
  const StepMetrics m = f.trainer->step();
  EXPECT_NEAR(m.loss, ref[0]["loss"].get<double>(), 1e-5 * ref[0]["loss"].get<double>());
  expect_params_match(f.trainer->grads(), "tests/golden/train_step1_grads.safetensors", 1e-4);
  expect_params_match(f.model->params(), "tests/golden/train_step1_params.safetensors", 1e-4);
}

TEST(TrainGolden, TenStepTrajectoryAndFinalParameters) {
  Fixture f;
  const nlohmann::json ref = golden_trajectory();
  ASSERT_EQ(ref.size(), 10u);
  for (const auto& r : ref) {
    const StepMetrics m = f.trainer->step();
    const double loss = r["loss"].get<double>(), norm = r["grad_norm"].get<double>();
    EXPECT_EQ(m.iteration, r["iteration"].get<int64_t>());
    EXPECT_NEAR(m.loss, loss, 1e-5 * std::abs(loss)) << "iteration " << m.iteration;
    EXPECT_NEAR(m.grad_norm, norm, 1e-5 * norm) << "iteration " << m.iteration;
    EXPECT_NEAR(m.lr, r["lr"].get<double>(), 1e-12) << "iteration " << m.iteration;
    EXPECT_FALSE(m.skipped);
  }
  expect_params_match(f.model->params(), "tests/golden/train_final_params.safetensors", 1e-4);
}

TEST(TrainGolden, CommandWritesTheMetricsFileAndWeights) {
  const std::string dir = testing::temp_dir("train_cmd");
  auto r = testing::run_command("cd " + dir + " && " + GLMRT_BINARY + " train --config " +
                                source_path("tests/golden/train_config.yaml") +
                                " --init-weights " + source_path("tests/golden/tiny_weights.safetensors") +
                                " --output-weights " + dir + "/out.safetensors --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("iteration       10/      10"), std::string::npos) << r.output;
  std::ifstream metrics(dir + "/run/metrics.jsonl");
  const nlohmann::json ref = golden_trajectory();
  std::string line;
  size_t i = 0;
  for (; std::getline(metrics, line); ++i) {
    const auto j = nlohmann::json::parse(line);
    for (const char* key : {"iteration", "loss", "grad_norm", "lr", "loss_scale", "skipped"})
      EXPECT_TRUE(j.contains(key)) << key;
    ASSERT_LT(i, ref.size());
    EXPECT_NEAR(j["loss"].get<double>(), ref[i]["loss"].get<double>(), 1e-5 * ref[i]["loss"].get<double>());
    EXPECT_EQ(j["loss_scale"].get<double>(), 1.0);
    EXPECT_FALSE(j["skipped"].get<bool>());
  }
  EXPECT_EQ(i, 10u);
  GlmParams out = GlmParams::allocate(load_run_config(source_path("tests/golden/train_config.yaml")).model,
                                      DType::F32, Device::cpu());
  load_full_weights(SafetensorsReader(dir + "/out.safetensors"),
                    load_run_config(source_path("tests/golden/train_config.yaml")).model, out);
  expect_params_match(out, "tests/golden/train_final_params.safetensors", 1e-4);
  std::filesystem::remove_all(dir);
}

TEST(LearningRate, WarmupThenDecays) {
  OptimizerConfig o;
  o.lr = 1.0;
  o.min_lr = 0.1;
  o.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(learning_rate(o, 14, 1), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(o, 14, 4), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, 14, 9), 0.55);  // cosine midpoint
  EXPECT_DOUBLE_EQ(learning_rate(o, 14, 14), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(o, 14, 20), 0.1);
  o.decay = LrDecay::Linear;
  EXPECT_DOUBLE_EQ(learning_rate(o, 14, 9), 0.55);
  EXPECT_DOUBLE_EQ(learning_rate(o, 14, 6), 0.82);
  o.decay = LrDecay::Constant;
  EXPECT_DOUBLE_EQ(learning_rate(o, 14, 9), 1.0);
}

}  // namespace
}  // namespace glmrt
