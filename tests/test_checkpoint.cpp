// Checkpoints through the command line, on 8 MPI ranks: bit-exact resume on the same layout (fp32
// and bf16), equal-loss resume on other layouts (resharding on load), refusal of damaged
// checkpoints with a fallback to the newest complete one, and SIGKILL during saves never leaving
// an unloadable `latest`.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "launcher/run_config.h"
#include "checkpoint/safetensors.h"
#include "tests/test_util.h"
#include "train/checkpointing.h"

namespace glmrt {
namespace {

using testing::source_path;
namespace fs = std::filesystem;

const char* kEnv =
    "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 "
    "OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_pml=ob1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 ";

// The golden tiny config with 4 layers (so 4 pipeline stages fit), dropout on, seeded init.
std::string train_cmd(const std::string& dir, int t, int p, int d, const std::string& extra) {
  return "cd " + dir + " && " + kEnv + "timeout 300 mpiexec -n " + std::to_string(t * p * d) + " " +
         GLMRT_BINARY + " train --config " + source_path("tests/golden/train_config.yaml") +
         " --set model.num_layers=4 --set train.hidden_dropout=0.1 --set train.attention_dropout=0.1"
         " --tensor " + std::to_string(t) + " --pipeline " + std::to_string(p) + " --data " +
         std::to_string(d) + " " + extra;
}

std::vector<double> losses(const std::string& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line)["loss"]);
  return out;
}

class Checkpoints : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::temp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name()); }
  void TearDown() override { fs::remove_all(dir_); }
  void run(int t, int p, int d, const std::string& extra) {
    auto r = testing::run_command(train_cmd(dir_, t, p, d, extra));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    last_output_ = r.output;
  }
  std::string dir_, last_output_;
};

TEST_F(Checkpoints, SameLayoutResumeIsBitExactInFp32AndBf16) {
  for (const std::string precision : {"fp32", "bf16"}) {
    const std::string p = " --set train.precision=" + precision;
    run(2, 2, 2, p + " --set train.metrics=full_" + precision + ".jsonl");
    run(2, 2, 2, p + " --set train.exit_interval=5 --set checkpoint.save=ck_" + precision +
                     " --set train.metrics=half_" + precision + ".jsonl");
    EXPECT_NE(last_output_.find("exit_interval reached at iteration 5"), std::string::npos) << last_output_;
    run(2, 2, 2, p + " --load ck_" + precision + " --set train.metrics=half_" + precision + ".jsonl");
    EXPECT_NE(last_output_.find("resumed from"), std::string::npos) << last_output_;
    const auto full = losses(dir_ + "/full_" + precision + ".jsonl");
    const auto resumed = losses(dir_ + "/half_" + precision + ".jsonl");
    ASSERT_EQ(full.size(), 10u);
    ASSERT_EQ(resumed.size(), 10u);  // the metrics file continues
    for (size_t i = 0; i < full.size(); ++i)
      EXPECT_EQ(full[i], resumed[i]) << precision << " iteration " << i + 1;  // bit for bit
  }
}

TEST_F(Checkpoints, ResumeOnAnotherLayoutReshardsModelAndOptimizer) {
  run(2, 2, 2, "--set train.metrics=full.jsonl");
  run(2, 2, 2, "--set train.exit_interval=5 --set checkpoint.save=ck --set parallel.zero=true "
               "--set train.metrics=half.jsonl");
  const auto full = losses(dir_ + "/full.jsonl");
  for (auto [t, p, d] : {std::tuple{1, 4, 2}, std::tuple{1, 1, 1}}) {
    const std::string metrics = "re_" + std::to_string(t) + std::to_string(p) + std::to_string(d) + ".jsonl";
    run(t, p, d, "--load ck --set train.metrics=" + metrics);
    const auto re = losses(dir_ + "/" + metrics);
    ASSERT_EQ(re.size(), 5u);
    for (size_t i = 0; i < re.size(); ++i)
      EXPECT_NEAR(re[i], full[5 + i], 1e-5 * full[5 + i]) << "(" << t << "," << p << "," << d << ") iteration " << 6 + i;
  }
}

TEST_F(Checkpoints, DamagedCheckpointsAreRefusedAndTheNewestCompleteOneIsLoaded) {
  run(2, 2, 2, "--set train.steps=4 --set checkpoint.save=ck --set checkpoint.interval=2");
  const GlmConfig model = [] {
    RunConfig rc = load_run_config(source_path("tests/golden/train_config.yaml"), {"model.num_layers=4"});
    return rc.model;
  }();
  const std::string ck = dir_ + "/ck";
  std::string note;
  EXPECT_EQ(find_checkpoint(ck, model, &note).iteration, 4);
  EXPECT_TRUE(note.empty()) << note;

  struct Damage {
    std::string what, expect;
    std::function<void(const std::string&)> apply;
  };
  const std::string shard = "/iter_0000004/model_tp1_pp0.safetensors";
  const std::vector<Damage> damages = {
      {"truncated shard", "truncated or replaced", [&](const std::string& d) { fs::resize_file(d + shard, fs::file_size(d + shard) - 10); }},
      {"flipped byte", "checksum mismatch", [&](const std::string& d) {
         std::fstream f(d + shard, std::ios::in | std::ios::out | std::ios::binary);
         f.seekp(-5, std::ios::end);
         f.put('\x7f');
       }},
      {"missing file", "optim_tp0_pp1.safetensors: missing", [&](const std::string& d) { fs::remove(d + "/iter_0000004/optim_tp0_pp1.safetensors"); }},
      {"missing manifest", "manifest.json: missing", [&](const std::string& d) { fs::remove(d + "/iter_0000004/manifest.json"); }},
  };
  for (const Damage& dmg : damages) {
    const std::string copy = dir_ + "/copy";
    fs::remove_all(copy);
    fs::copy(ck, copy, fs::copy_options::recursive);
    dmg.apply(copy);
    note.clear();
    const CheckpointManifest m = find_checkpoint(copy, model, &note);
    EXPECT_EQ(m.iteration, 2) << dmg.what;  // fell back to the newest complete checkpoint
    EXPECT_NE(note.find(dmg.expect), std::string::npos) << dmg.what << ": " << note;
    EXPECT_NE(note.find("loading " + copy + "/iter_0000002 instead"), std::string::npos) << note;
  }
  // A checkpoint of another model is refused outright, naming the key.
  RunConfig other = load_run_config(source_path("tests/golden/train_config.yaml"), {"model.num_layers=4", "model.hidden_size=32"});
  try {
    find_checkpoint(ck, other.model, nullptr);
    ADD_FAILURE() << "accepted a checkpoint of another model";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("saved from another model: model.hidden_size is 64"), std::string::npos) << e.what();
  }
  // Through the command line, a fallback is announced and training resumes from iteration 2.
  fs::resize_file(ck + shard, 100);
  run(2, 2, 2, "--set train.steps=4 --load ck --set train.metrics=resume.jsonl");
  EXPECT_NE(last_output_.find("loading ck/iter_0000002 instead"), std::string::npos) << last_output_;
  EXPECT_NE(last_output_.find("resumed from"), std::string::npos);
  EXPECT_EQ(losses(dir_ + "/resume.jsonl").size(), 2u);
}

TEST_F(Checkpoints, SigkillDuringSavesNeverLeavesAnUnloadableLatest) {
  const RunConfig rc = load_run_config(source_path("tests/golden/train_config.yaml"), {"model.num_layers=4"});
  int loaded = 0;
  for (int attempt = 0; attempt < 6; ++attempt) {
    // Save at every step; once the first save is committed, kill the whole job at a different
    // moment each time (a save is in flight at almost every moment). Each attempt has its own
    // output file: waiting on a shared one could see the previous attempt's "saved" line.
    const std::string script = dir_ + "/kill.sh";
    std::ofstream(script) << "(" << train_cmd(dir_, 2, 2, 2, "--set train.steps=100000 --set checkpoint.save=ck" + std::to_string(attempt) +
                                                            " --set checkpoint.interval=1 --set checkpoint.keep=2") << " > out" << attempt << ".txt 2>&1) &\n"
                          << "for i in $(seq 1 3600); do grep -q 'glmrt train: saved' out" << attempt << ".txt 2>/dev/null && break; sleep 0.05; done\n"
                          << "sleep " << 0.05 + 0.23 * attempt << "\n"
                          << "pkill -9 -f 'ck" << attempt << " --set checkpoint.interval=1' ; wait\n";
    testing::run_command("cd " + dir_ + " && bash " + script);
    std::string note;
    try {
      const CheckpointManifest m = find_checkpoint(dir_ + "/ck" + std::to_string(attempt), rc.model, &note);
      ++loaded;
      // `latest` must name a complete checkpoint: no fallback may have been needed.
      EXPECT_TRUE(note.empty()) << "attempt " << attempt << ": " << note;
      EXPECT_GT(m.iteration, 0);
    } catch (const CheckpointError& e) {
      // Only acceptable before the very first checkpoint was committed.
      EXPECT_FALSE(fs::exists(dir_ + "/ck" + std::to_string(attempt) + "/latest"))
          << "attempt " << attempt << ": " << e.what();
    }
  }
  EXPECT_EQ(loaded, 6);
}

}  // namespace
}  // namespace glmrt

namespace glmrt {
namespace {

// Every tensor of every file of two checkpoints, by name (the files may be split differently).
std::map<std::string, std::vector<char>> all_tensors(const std::string& dir) {
  std::map<std::string, std::vector<char>> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    const std::string kind = e.path().filename().string().substr(0, 5);  // "model" / "optim"
    SafetensorsReader r(e.path().string());
    for (const auto& entry : r.entries()) {
      const Tensor t = r.tensor(entry.name);
      const char* p = static_cast<const char*>(t.data());
      out[kind + ":" + entry.name + ":" + std::filesystem::path(e.path()).filename().string()] =
          std::vector<char>(p, p + t.nbytes());
    }
  }
  return out;
}

TEST_F(Checkpoints, ReshardRoundTripReproducesEveryTensorBitForBit) {
  run(2, 2, 2, "--set train.steps=3 --set checkpoint.save=a");
  const std::string config = source_path("tests/golden/train_config.yaml");
  auto reshard = [&](const std::string& from, const std::string& to, int t, int p) {
    auto r = testing::run_glmrt("reshard --config " + config + " --set model.num_layers=4 --from " +
                                dir_ + "/" + from + " --to " + dir_ + "/" + to + " --tensor " +
                                std::to_string(t) + " --pipeline " + std::to_string(p));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  };
  reshard("a", "b", 1, 1);
  reshard("b", "c", 2, 2);
  const auto original = all_tensors(dir_ + "/a/iter_0000003");
  const auto round_trip = all_tensors(dir_ + "/c/iter_0000003");
  ASSERT_EQ(original.size(), round_trip.size());
  EXPECT_GT(original.size(), 40u);
  for (const auto& [key, bytes] : original) {
    auto it = round_trip.find(key);
    ASSERT_NE(it, round_trip.end()) << key;
    EXPECT_TRUE(it->second == bytes) << key << " differs";
  }
  // The (1,1) checkpoint is one model and one optimizer file that hold full tensors.
  EXPECT_TRUE(fs::exists(dir_ + "/b/iter_0000003/model_tp0_pp0.safetensors"));
  EXPECT_FALSE(fs::exists(dir_ + "/b/iter_0000003/model_tp1_pp0.safetensors"));
  SafetensorsReader full(dir_ + "/b/iter_0000003/model_tp0_pp0.safetensors");
  EXPECT_EQ(full.find("transformer.layers.3.mlp.dense_h_to_4h.weight")->shape, (Shape{256, 64}));
  // Another tool reads it: the manifest with json, a shard with numpy through the reference reader.
  auto py = testing::run_command(
      "python3 -c \"import json, sys; from safetensors.numpy import load_file; d = sys.argv[1]; "
      "m = json.load(open(d + '/manifest.json')); w = load_file(d + '/model_tp0_pp0.safetensors'); "
      "o = load_file(d + '/optim_tp0_pp0.safetensors'); "
      "print(m['iteration'], m['layout'], w['transformer.word_embeddings.weight'].shape, "
      "o['transformer.final_layernorm.weight.exp_avg'].dtype)\" " + dir_ + "/b/iter_0000003");
  EXPECT_EQ(py.exit_code, 0) << py.output;
  EXPECT_NE(py.output.find("3 {'data': 2, 'pipeline': 1, 'tensor': 1} (256, 64) float32"), std::string::npos) << py.output;
}

}  // namespace
}  // namespace glmrt
