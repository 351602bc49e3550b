// Pretraining end to end through the command line: train a tokenizer, preprocess text into token
// files, look at the built samples (glmrt data-sample), and train with the GLM objective on
// (1,1,1) and on (2,2,2) under mpiexec: the two loss curves are equal (fp32, ≤ 1e-5), with
// dropout and validation on.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/samples.h"
#include "launcher/run_config.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::source_path;

class Pretraining : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = testing::temp_dir("pretraining");
    auto r = testing::run_glmrt("train-tokenizer --input " + source_path("tests/data/tokenizer_corpus.txt") +
                                " --vocab-size 800 --output " + dir_ + "/tok.model");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::ofstream(dir_ + "/run.yaml") << R"(model: {num_layers: 4, hidden_size: 32, num_attention_heads: 4,
  ffn_hidden_size: 88, vocab_size: 808, max_sequence_length: 64, rotary_fp16_tables: false}
tokens: {MASK: 800, gMASK: 801, sMASK: 802, eod: 803, sop: 804, eop: 805, eos: 2, pad: 0}
tokenizer: {model: tok.model}
data: {tokens: corpus, split: [90, 10]}
train: {seq_length: 32, micro_batch_size: 2, global_batch_size: 8, steps: 6, seed: 7,
        hidden_dropout: 0.1, attention_dropout: 0.1, embedding_grad_shrink: 0.1,
        eval_interval: 3, eval_batches: 1, log_interval: 1}
optimizer: {lr: 1.0e-3, warmup_steps: 2, min_lr: 1.0e-4, eps: 1.0e-4}
)";
    r = testing::run_glmrt("preprocess --config " + dir_ + "/run.yaml --input " +
                           source_path("tests/data/tokenizer_corpus.txt") + " --output " + dir_ + "/corpus");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  // Losses of every logged step and validation, from the metrics file of a run.
  static std::vector<double> train(const std::string& name, int ranks, const std::string& layout) {
    const std::string metrics = dir_ + "/" + name + ".jsonl";
    auto r = testing::run_command(
        "cd " + dir_ + " && env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
        "OMPI_MCA_mpi_yield_when_idle=1 OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_pml=ob1 "
        "OMP_NUM_THREADS=1 timeout 300 mpiexec -n " + std::to_string(ranks) + " " + GLMRT_BINARY +
        " train --config run.yaml " + layout + " --set train.metrics=" + metrics);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::vector<double> losses;
    std::ifstream in(metrics);
    for (std::string line; std::getline(in, line);) {
      const auto j = nlohmann::json::parse(line);
      losses.push_back(j.contains("loss") ? j["loss"].get<double>() : j["validation_loss"].get<double>());
    }
    return losses;
  }
  static std::string dir_;
};
std::string Pretraining::dir_;

TEST_F(Pretraining, DataSamplePrintsValidGlmSamplesOfBothModes) {
  auto r = testing::run_glmrt("data-sample --config " + dir_ + "/run.yaml --count 200 --output " + dir_ + "/s.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const GlmConfig model = load_run_config(dir_ + "/run.yaml").model;
  std::ifstream in(dir_ + "/s.jsonl");
  int lines = 0, gmask = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    const Sample s = parse_sample_json(line, model, "data-sample line " + std::to_string(lines + 1));
    const std::string mode = nlohmann::json::parse(line)["mode"];
    EXPECT_TRUE(mode == "gMASK" || mode == "MASK") << mode;
    gmask += mode == "gMASK";
    EXPECT_EQ(s.tokens.size(), 32u);
    // Every sample holds its mask token and a sop.
    const int32_t mask_id = mode == "gMASK" ? 801 : 800;
    EXPECT_NE(std::find(s.tokens.begin(), s.tokens.end(), mask_id), s.tokens.end());
    EXPECT_NE(std::find(s.tokens.begin(), s.tokens.end(), 804), s.tokens.end());
  }
  EXPECT_EQ(lines, 200);
  EXPECT_GT(gmask, 110);  // ≈ 0.7 · 200
  EXPECT_LT(gmask, 170);
}

TEST_F(Pretraining, TwoTwoTwoLayoutGivesTheSingleRankLossCurve) {
  const std::vector<double> single = train("single", 1, "--tensor 1 --pipeline 1");
  const std::vector<double> three_d = train("three_d", 8, "--tensor 2 --pipeline 2 --data 2");
  ASSERT_EQ(single.size(), 8u);  // 6 steps + 2 validations
  ASSERT_EQ(three_d.size(), single.size());
  for (size_t i = 0; i < single.size(); ++i)
    EXPECT_NEAR(three_d[i], single[i], 1e-5 * std::abs(single[i])) << "entry " << i;
  EXPECT_LT(single[5], single[0]);  // it trains
}

}  // namespace
}  // namespace glmrt
