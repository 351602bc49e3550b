// Mixed precision on the CPU backend (16-bit storage, fp32 compute, rounding at op boundaries):
// bf16 and fp16 training follow the fp32 run, and fp16 overflows are skipped with the loss scale
// halved and the weights untouched.
#include "checkpoint/full_weights.h"
#include "launcher/run_config.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace glmrt {
namespace {

using testing::source_path;

struct PrecisionRun {
  RunConfig rc = load_run_config(source_path("tests/golden/train_config.yaml"));
  std::unique_ptr<GlmModel> model;
  std::unique_ptr<Trainer> trainer;
  explicit PrecisionRun(Precision p, double initial_scale = 65536.0) {
    rc.train.precision = p;
    rc.train.loss_scale.initial = initial_scale;
    rc.train.loss_scale.hysteresis = 1;
    const DType dt = p == Precision::FP32 ? DType::F32 : p == Precision::BF16 ? DType::BF16 : DType::F16;
    GlmParams params = GlmParams::allocate(rc.model, dt, Device::cpu());
    load_full_weights(SafetensorsReader(source_path("tests/golden/tiny_weights.safetensors")), rc.model, params);
    model = std::make_unique<GlmModel>(rc.model, std::move(params));
    trainer = std::make_unique<Trainer>(*model, rc.train, rc.optimizer,
                                        read_samples_file(rc.data.samples, rc.model));
  }
};

TEST(MixedPrecision, Bf16AndFp16FollowFp32) {
  PrecisionRun fp32(Precision::FP32), bf16(Precision::BF16), fp16(Precision::FP16);
  EXPECT_EQ(bf16.model->dtype(), DType::BF16);
  for (int s = 0; s < 4; ++s) {
    const StepMetrics a = fp32.trainer->step(), b = bf16.trainer->step(), c = fp16.trainer->step();
    EXPECT_NEAR(b.loss, a.loss, 2e-2 * a.loss) << "bf16 step " << s + 1;
    EXPECT_NEAR(c.loss, a.loss, 2e-3 * a.loss) << "fp16 step " << s + 1;
    EXPECT_NE(b.loss, a.loss);  // really computed in 16 bits
    EXPECT_FALSE(c.skipped);
    EXPECT_EQ(c.loss_scale, 65536.0);
    EXPECT_EQ(a.loss_scale, 1.0);
  }
}

TEST(MixedPrecision, Fp16OverflowSkipsTheStepAndHalvesTheScale) {
  // A loss scale of 2^40 overflows fp16 gradients (max 65504) until it has come down.
  PrecisionRun run(Precision::FP16, 1099511627776.0);
  double scale = 1099511627776.0;
  int skipped = 0;
  for (int s = 0; s < 40; ++s) {
    const Tensor before = run.model->params().flat().clone();
    const Tensor master_before = run.trainer->master().flat().clone();
    const StepMetrics m = run.trainer->step();
    EXPECT_EQ(m.loss_scale, scale) << "step " << m.iteration;
    if (!m.skipped) {
      EXPECT_TRUE(std::isfinite(m.grad_norm));
      EXPECT_NE(0, std::memcmp(before.data(), run.model->params().flat().data(), before.nbytes()));
      break;
    }
    ++skipped;
    EXPECT_FALSE(std::isfinite(m.grad_norm));
    // Skipped: weights and fp32 master weights bit for bit unchanged, the scale halves.
    EXPECT_EQ(0, std::memcmp(before.data(), run.model->params().flat().data(), before.nbytes()));
    EXPECT_EQ(0, std::memcmp(master_before.data(), run.trainer->master().flat().data(),
                             master_before.nbytes()));
    scale /= 2;
  }
  EXPECT_GT(skipped, 5);
  EXPECT_LT(skipped, 40);
}

TEST(LossScaler, HysteresisAndGrowth) {
  LossScaleConfig c;
  c.initial = 1024;
  c.window = 3;
  c.hysteresis = 2;
  c.min = 256;
  LossScaler s(c, true);
  s.update(true);  // first overflow: tolerated by hysteresis
  EXPECT_EQ(s.scale(), 1024);
  s.update(true);  // second: halves
  EXPECT_EQ(s.scale(), 512);
  s.update(true);
  EXPECT_EQ(s.scale(), 256);
  s.update(true);  // not below min
  EXPECT_EQ(s.scale(), 256);
  for (int i = 0; i < 3; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 512);  // window of clean steps: doubles
  LossScaler off(c, false);
  off.update(true);
  EXPECT_EQ(off.scale(), 1.0);
}

}  // namespace
}  // namespace glmrt
