// `glmrt generate` refuses bad input with a message naming what is wrong, a non-zero exit and
// no output file; a prompt that is too long for the model is named with its length.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::run_glmrt;
using testing::source_path;

std::string model_args() {
  return "generate --config " + source_path("tests/golden/tiny_fp16rope.yaml") + " --weights " +
         source_path("tests/golden/tiny_weights.safetensors") + " --threads 1 ";
}

void expect_refused(const std::string& args, const std::string& needle) {
  const auto r = run_glmrt(model_args() + args);
  EXPECT_NE(r.exit_code, 0) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
}

TEST(GenerateCli, BadInputIsRefusedByName) {
  expect_refused("--prompt-ids 5,x,7", "'x' is not a token id");
  expect_refused("--prompt-ids 5,300,7", "prompt token 1 is 300, outside the vocabulary");
  expect_refused("--prompt-ids 5,6 --strategy bogus", "'bogus' is not a strategy");
  expect_refused("--prompt-ids 5,6 --top-p 1.5", "--top-p");
  expect_refused("--prompt-ids 5,6 --temperature 0", "--temperature");
  expect_refused("--prompt-ids 5,6 --num-beams 0 --strategy beam", "--num-beams");
  expect_refused("--prompt-ids 5,6 --logprobs 6", "--logprobs must be in 0..5");
  expect_refused("--prompt-ids 5,6 --logprobs 1 --strategy beam", "--logprobs applies to greedy and sampling");
  expect_refused("--prompt 'hello'", "needs a tokenizer");
  expect_refused("--prompt-ids 5,6 --prompt 'x'", "at most one of");
  expect_refused("--input-file /nonexistent/q.txt", "no such file");
  expect_refused("--prompt-ids 5,6 --tensor 3", "");
  // The tiny golden model takes 2048 positions: 2050 ids plus sop do not fit.
  std::string ids = "1";
  for (int i = 1; i < 2050; ++i) ids += ",1";
  expect_refused("--prompt-ids " + ids, "the prompt is too long: 2052 tokens");
}

TEST(GenerateCli, ABadLineNamesFileAndLineAndWritesNothing) {
  const std::string dir = testing::temp_dir("generate_cli_bad_line");
  const std::string queries = dir + "/q.txt", out = dir + "/out.jsonl";
  std::ofstream(queries) << "5,6,250,7\n\n8,9,oops\n";
  const auto r = run_glmrt(model_args() + "--input-file " + queries + " --output " + out + " --json");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(queries + ":3: 'oops' is not a token id"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(GenerateCli, AnswersEveryQueryOfAFileInOrder) {
  const std::string dir = testing::temp_dir("generate_cli_file");
  const std::string queries = dir + "/q.txt", out = dir + "/out.jsonl";
  std::ofstream(queries) << "5,6,250,7\n1,2,3\n9,252,9,250\n";
  const auto r = run_glmrt(model_args() + "--input-file " + queries + " --output " + out +
                           " --json --strategy greedy --out-seq-length 12");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream in(out);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    EXPECT_NE(line.find("\"query\":" + std::to_string(n)), std::string::npos) << line;
    ++n;
  }
  EXPECT_EQ(n, 3);
}

}  // namespace
}  // namespace glmrt

namespace glmrt {
namespace {

// A checkpoint written by a (tensor 2, pipeline 2) training run serves on one rank, on (1, 2) and
// on (4, 1) — each rank joining saved pieces, or slicing one — with the answers of its full
// weight file.
TEST(GenerateCli, LoadsACheckpointOfAnyLayout) {
  const std::string dir = testing::temp_dir("generate_cli_load");
  const std::string env =
      "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 "
      "OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_pml=ob1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 ";
  const std::string config = source_path("tests/golden/train_config.yaml");
  const std::string common = " --config " + config + " --set model.num_layers=4 ";
  auto train = testing::run_command(
      "cd " + dir + " && " + env + "timeout 300 mpiexec -n 4 " + GLMRT_BINARY + " train" + common +
      "--tensor 2 --pipeline 2 --data 1 --set train.steps=2 --set checkpoint.save=ck "
      "--output-weights full.safetensors");
  ASSERT_EQ(train.exit_code, 0) << train.output;
  const std::string query = " --prompt-ids 5,6,7,250,9,10,250,3 --strategy beam --deterministic "
                            "--out-seq-length 24 --json --threads 1";
  // The answer file (--output: under mpiexec stdout and stderr are forwarded separately, so the
  // answer on stdout could arrive cut by a log line).
  auto answer = [&](const std::string& launch, const std::string& source) {
    std::filesystem::remove(dir + "/answer.jsonl");
    auto r = testing::run_command("cd " + dir + " && " + env + launch + " generate" + common +
                                  source + query + " --output answer.jsonl");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::ifstream in(dir + "/answer.jsonl");
    std::stringstream json;
    json << in.rdbuf();
    return json.str();
  };
  const std::string from_weights = answer(std::string(GLMRT_BINARY), "--weights full.safetensors");
  ASSERT_NE(from_weights.find("\"output_ids\""), std::string::npos) << from_weights;
  EXPECT_EQ(answer(std::string(GLMRT_BINARY), "--load ck"), from_weights);
  EXPECT_EQ(answer("timeout 300 mpiexec -n 2 " + std::string(GLMRT_BINARY), "--load ck --pipeline 2 --data 1"),
            from_weights);
  EXPECT_EQ(answer("timeout 300 mpiexec -n 4 " + std::string(GLMRT_BINARY),
                   "--load ck --tensor 4 --pipeline 1 --data 1"),
            from_weights);
}

}  // namespace
}  // namespace glmrt
