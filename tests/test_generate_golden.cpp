// `glmrt generate` against the independent PyTorch generation reference
// (tests/reference/glm_generate_reference.py; goldens in tests/golden/generate/): greedy, seeded
// sampling (temperature / top_k / top_p, Philox draw) and deterministic beam search on a tiny GLM,
// for [MASK] / [sMASK] / [gMASK] prompts, appended gMASK and eos, min_gen_length and both length
// limits (out_seq_length and max_sequence_length). The reference recomputes the whole sequence in
// float64 at every step (no KV cache), and every decision along a case clears the fp32 logits of
// the C++ side by a margin (cases.json "margin" ≥ 1e-3), so the answers must be equal token for
// token: single-rank, under mpiexec for (tensor, pipeline) = (2, 2) and (1, 2), and batched
// (--input-file, queries of different lengths in one batch).
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "tests/test_util.h"

namespace glmrt {
namespace {

using nlohmann::json;
using testing::ids_csv;
using testing::source_path;

struct GenCase {
  std::string name, args, finish_reason;
  std::vector<int32_t> prompt_ids, output_ids;
  std::vector<std::vector<int32_t>> spans;
  double margin = 0;
  bool beam() const { return args.find("--strategy beam") != std::string::npos; }
};

// The golden cases; empty (and `load_error` set) when cases.json cannot be read.
std::string load_error;
const std::vector<GenCase>& cases() {
  static const std::vector<GenCase> all = [] {
    std::vector<GenCase> out;
    try {
      std::ifstream in(source_path("tests/golden/generate/cases.json"));
      if (!in) throw std::runtime_error("cannot open tests/golden/generate/cases.json");
      const json j = json::parse(in);
      for (const auto& c : j) {
        GenCase g;
        g.name = c.at("name").get<std::string>();
        g.args = c.at("args").get<std::string>();
        g.finish_reason = c.value("finish_reason", std::string());
        g.prompt_ids = c.at("prompt_ids").get<std::vector<int32_t>>();
        g.output_ids = c.at("output_ids").get<std::vector<int32_t>>();
        g.spans = c.at("spans").get<std::vector<std::vector<int32_t>>>();
        g.margin = c.at("margin").get<double>();
        out.push_back(std::move(g));
      }
    } catch (const std::exception& e) {
      load_error = e.what();
      out.clear();
    }
    return out;
  }();
  return all;
}

std::vector<size_t> case_indices() {
  std::vector<size_t> idx(cases().size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  return idx;
}

// `generate` with the golden model; `extra` = the query source plus the case's flags.
std::string generate_args(const std::string& extra) {
  return "generate --config " + source_path("tests/golden/generate/tiny.yaml") + " --weights " +
         source_path("tests/golden/generate/weights.safetensors") + " --json --threads 1 " + extra;
}

std::string single_query(const GenCase& c) { return "--prompt-ids " + ids_csv(c.prompt_ids) + " " + c.args; }

// The JSON objects of the answers: the output lines that start with '{' and hold "query"
// (stderr is captured together with stdout; anything else is ignored).
std::vector<json> answers(const std::string& output) {
  std::vector<json> out;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] != '{') continue;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      ADD_FAILURE() << "unparsable JSON line: " << line;
      continue;
    }
    if (j.is_object() && j.contains("query")) out.push_back(std::move(j));
  }
  return out;
}

std::string tail(const std::string& s, size_t n = 4000) { return s.size() > n ? "..." + s.substr(s.size() - n) : s; }

// One answer against its golden: prompt echo, output_ids, spans and the finish reason of the last
// blank. (Beam search: "stop" when the best end beam ends on eop/eos. The goldens hold no case where
// the length limit ends a search whose best beam ended on eop, so no reading of that corner is
// pinned down here.)
void expect_answer(const json& got, const GenCase& c, const std::string& where) {
  SCOPED_TRACE(where + ": case " + c.name + " (" + c.args + ")");
  ASSERT_TRUE(got.is_object()) << got.dump();
  ASSERT_FALSE(got.contains("error")) << got.dump();
  ASSERT_TRUE(got.contains("output_ids") && got.contains("spans")) << got.dump();
  if (got.contains("prompt_ids")) {
    EXPECT_EQ(got["prompt_ids"].get<std::vector<int32_t>>(), c.prompt_ids);
  }
  EXPECT_EQ(got["output_ids"].get<std::vector<int32_t>>(), c.output_ids)
      << "golden output_ids " << ids_csv(c.output_ids) << " (margin " << c.margin << "), got "
      << got["output_ids"].dump();
  EXPECT_EQ(got["spans"].get<std::vector<std::vector<int32_t>>>(), c.spans) << "got " << got["spans"].dump();
  if (!c.finish_reason.empty()) {
    ASSERT_TRUE(got.contains("finish_reason")) << got.dump();
    EXPECT_EQ(got["finish_reason"].get<std::string>(), c.finish_reason);
  }
}

// A run of `glmrt generate` whose answers go to a file (--output): under mpiexec a rank's stdout
// and stderr are forwarded separately, so a long JSON line on stdout could arrive cut by a log
// line in a combined capture.
struct GenerateRun {
  testing::CommandResult log;  // stdout + stderr
  std::string answers;         // the --output file
};
GenerateRun run_generate(const std::string& launch, const std::string& args) {
  static const std::string dir = testing::temp_dir("generate_golden_out");
  static int counter = 0;
  const std::string file = dir + "/answers_" + std::to_string(counter++) + ".jsonl";
  GenerateRun run;
  run.log = testing::run_command(launch + " " + generate_args(args + " --output " + file));
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  run.answers = text.str();
  std::filesystem::remove(file);
  return run;
}

// One process, no mpiexec (ob1 skips UCX start-up, as testing::run_glmrt does).
const std::string kSingleRank = std::string("OMPI_MCA_pml=ob1 ") + GLMRT_BINARY;

// The single answer of a one-query run.
void expect_single_answer(const GenerateRun& run, const GenCase& c, const std::string& where) {
  const testing::CommandResult& r = run.log;
  ASSERT_EQ(r.exit_code, 0) << where << ": " << tail(r.output);
  const auto got = answers(run.answers);
  ASSERT_EQ(got.size(), 1u) << where << ": expected one JSON answer\n" << tail(r.output);
  EXPECT_EQ(got[0]["query"], 0) << got[0].dump();
  expect_answer(got[0], c, where);
}

TEST(GenerateGoldenCases, LoadAndCoverTheSemantics) {
  ASSERT_TRUE(load_error.empty()) << load_error;
  ASSERT_GE(cases().size(), 14u);
  int greedy = 0, sample = 0, beam = 0, multi_blank = 0, length = 0;
  for (const auto& c : cases()) {
    greedy += c.args.find("--strategy greedy") != std::string::npos;
    sample += c.args.find("--strategy sample") != std::string::npos;
    beam += c.beam();
    multi_blank += c.spans.size() > 1;
    length += c.finish_reason == "length";
    EXPECT_GE(c.margin, 1e-4) << c.name;  // fp32 rounding cannot flip a decision
    EXPECT_GE(c.prompt_ids.size(), 8u) << c.name;
  }
  EXPECT_GE(greedy, 5);
  EXPECT_GE(sample, 3);
  EXPECT_GE(beam, 4);
  EXPECT_GE(multi_blank, 3);
  EXPECT_GE(length, 2);
}

// --- single rank, one query per run -------------------------------------------------------------

class GenerateGolden : public ::testing::TestWithParam<size_t> {};

TEST_P(GenerateGolden, MatchesPyTorchReference) {
  const GenCase& c = cases()[GetParam()];
  expect_single_answer(run_generate(kSingleRank, single_query(c)), c, "single rank");
}

INSTANTIATE_TEST_SUITE_P(Cases, GenerateGolden, ::testing::ValuesIn(case_indices()),
                         [](const auto& info) { return cases()[info.param].name; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GenerateGolden);

// --- MPI layouts ------------------------------------------------------------------------------

struct Layout {
  int tensor, pipeline;
};
void PrintTo(const Layout& l, std::ostream* os) { *os << "tensor " << l.tensor << ", pipeline " << l.pipeline; }

class GenerateGoldenMpi : public ::testing::TestWithParam<std::tuple<size_t, Layout>> {};

TEST_P(GenerateGoldenMpi, MatchesPyTorchReference) {
  const GenCase& c = cases()[std::get<0>(GetParam())];
  const Layout l = std::get<1>(GetParam());
  const std::string where = "tensor " + std::to_string(l.tensor) + ", pipeline " + std::to_string(l.pipeline);
  const auto run = run_generate(
      "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 "
      "OMPI_MCA_pml=ob1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 timeout 300 mpiexec -n " +
          std::to_string(l.tensor * l.pipeline) + " --oversubscribe " + GLMRT_BINARY,
      single_query(c) + " --tensor " + std::to_string(l.tensor) + " --pipeline " +
          std::to_string(l.pipeline));
  expect_single_answer(run, c, where);
}

INSTANTIATE_TEST_SUITE_P(Layouts, GenerateGoldenMpi,
                         ::testing::Combine(::testing::ValuesIn(case_indices()),
                                            ::testing::Values(Layout{2, 2}, Layout{1, 2})),
                         [](const auto& info) {
                           const Layout l = std::get<1>(info.param);
                           return cases()[std::get<0>(info.param)].name + "_t" + std::to_string(l.tensor) +
                                  "p" + std::to_string(l.pipeline);
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GenerateGoldenMpi);

// --- batched: every case with the same flags in one --input-file run ---------------------------

// Every case, grouped by its flags into --input-file runs of `launch` (a batch shares one set of
// flags; more queries than --max-batch 4, so several batches), each answer against its golden.
void check_batched_runs(const std::string& launch, const std::string& flags, const std::string& label) {
  ASSERT_TRUE(load_error.empty()) << load_error;
  // Group the cases by their flags, in file order.
  std::vector<std::string> order;
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < cases().size(); ++i) {
    const auto& args = cases()[i].args;
    if (!groups.count(args)) order.push_back(args);
    groups[args].push_back(i);
  }
  size_t largest = 0;
  for (const auto& [args, members] : groups) largest = std::max(largest, members.size());
  EXPECT_GT(largest, 4u);  // more queries than --max-batch: several batches

  std::string tag;
  for (const char ch : label) tag += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  const std::string dir = testing::temp_dir("generate_golden_batch_" + tag);
  for (size_t g = 0; g < order.size(); ++g) {
    const auto& members = groups[order[g]];
    const std::string file = dir + "/queries_" + std::to_string(g) + ".txt";
    {
      std::ofstream out(file);
      for (size_t i : members) out << ids_csv(cases()[i].prompt_ids) << "\n";
    }
    const GenerateRun run =
        run_generate(launch, "--input-file " + file + " --input-format ids --max-batch 4 " + order[g] + flags);
    const testing::CommandResult& r = run.log;
    const std::string where =
        label + ", batch of " + std::to_string(members.size()) + " (" + order[g] + ")";
    ASSERT_EQ(r.exit_code, 0) << where << ": " << tail(r.output);
    const auto got = answers(run.answers);
    ASSERT_EQ(got.size(), members.size()) << where << "\n" << tail(r.output);
    std::vector<bool> seen(members.size(), false);
    for (const auto& a : got) {
      ASSERT_TRUE(a["query"].is_number_integer()) << a.dump();
      const auto q = a["query"].get<int64_t>();
      ASSERT_TRUE(q >= 0 && q < static_cast<int64_t>(members.size())) << a.dump();
      EXPECT_FALSE(seen[q]) << "query " << q << " answered twice";
      seen[q] = true;
      expect_answer(a, cases()[members[q]], where + ", query " + std::to_string(q));
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(GenerateGoldenBatch, BatchedQueriesOfDifferentLengthsMatchSingleQueryGoldens) {
  check_batched_runs(kSingleRank, "", "single rank");
}

// Two data-parallel replicas share the queries of a file out (each generates its own share):
// every answer still equals its golden, in the file's order.
TEST(GenerateGoldenBatch, DataParallelReplicasAnswerEveryQueryAsOneRankDoes) {
  const std::string mpi =
      "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 "
      "OMPI_MCA_pml=ob1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 timeout 300 mpiexec -n 4 "
      "--oversubscribe " + std::string(GLMRT_BINARY);
  check_batched_runs(mpi, " --tensor 1 --pipeline 2 --data 2", "(1, 2, 2)");
  check_batched_runs(mpi, " --tensor 2 --pipeline 1 --data 2", "(2, 1, 2)");
}

}  // namespace
}  // namespace glmrt
