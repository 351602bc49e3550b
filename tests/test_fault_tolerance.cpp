// A failing rank never leaves the others hanging: an exception on one rank mid-step, or a rank
// killed with SIGKILL, ends the whole 8-rank job with a non-zero code within 30 s.
#include <chrono>
#include <filesystem>
#include <fstream>

#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::source_path;

const char* kEnv =
    "env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 "
    "OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1";

std::string train_command(const std::string& dir) {
  return std::string(kEnv) + " mpiexec -n 8 " + GLMRT_BINARY + " train --config " +
         source_path("tests/golden/train_config.yaml") + " --set train.steps=100000 --set train.metrics=" +
         dir + "/metrics.jsonl --tensor 2 --pipeline 2";
}

TEST(FaultTolerance, AnExceptionOnOneRankEndsTheJobNamingTheRank) {
  const std::string dir = testing::temp_dir("fault_throw");
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::run_command("cd " + dir + " && GLMRT_FAULT=rank=5,step=3 timeout 120 " +
                                train_command(dir));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "the job hung until timeout killed it";
  EXPECT_NE(r.output.find("rank 5: error: fault injected"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("iteration        2/"), std::string::npos) << "the failure was not mid-run";
  EXPECT_LT(seconds, 30.0);
  std::filesystem::remove_all(dir);
}

TEST(FaultTolerance, AHangingRankIsReportedByItsPeersDeadline) {
  const std::string dir = testing::temp_dir("fault_hang");
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::run_command("cd " + dir + " && GLMRT_FAULT=rank=6,step=3,hang timeout 120 " +
                                train_command(dir) + " --set parallel.timeout_s=3");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.exit_code, 124) << "the job hung until timeout killed it";
  // A peer names itself, its group and the operation that found no answer.
  EXPECT_NE(r.output.find("no answer from the group within 3 s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" group rank "), std::string::npos) << r.output;
  EXPECT_LT(seconds, 30.0);
  std::filesystem::remove_all(dir);
}

TEST(FaultTolerance, AKilledRankEndsTheJob) {
  const std::string dir = testing::temp_dir("fault_kill");
  const std::string script = dir + "/kill.sh";
  std::ofstream(script) << "cd " << dir << "\n"
      << "(timeout 120 " << train_command(dir) << " > out.txt 2>&1; echo $? > rc.txt) &\n"
      << "for i in $(seq 1 600); do grep -q 'iteration        3/' out.txt 2>/dev/null && break; sleep 0.1; done\n"
      << "victim=$(for p in $(pgrep -x glmrt); do grep -qa " << dir << " /proc/$p/cmdline 2>/dev/null && echo $p; done | tail -1)\n"
      << "[ -n \"$victim\" ] || { echo 'no rank to kill'; exit 3; }\n"
      << "start=$(date +%s.%N); kill -9 $victim; wait\n"
      << "end=$(date +%s.%N); echo \"rc=$(cat rc.txt) seconds=$(echo \"$end - $start\" | bc)\"\n";
  auto r = testing::run_command("bash " + script);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int rc = -1;
  double seconds = 1e9;
  ASSERT_EQ(std::sscanf(r.output.c_str() + r.output.find("rc="), "rc=%d seconds=%lf", &rc, &seconds), 2) << r.output;
  EXPECT_NE(rc, 0);
  EXPECT_NE(rc, 124) << "the job hung until timeout killed it";
  EXPECT_LT(seconds, 30.0);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace glmrt

namespace glmrt {
namespace {

// Slurm's --signal (or a preemption) sends SIGUSR1/SIGTERM: training stops at a step boundary,
// says so, and exits cleanly with every completed step in the metrics file.
TEST(StopSignal, SigusrStopsTrainingAtAStepBoundary) {
  const std::string dir = testing::temp_dir("stop_signal");
  const std::string script = dir + "/stop.sh";
  std::ofstream(script) << "cd " << dir << "\n"
      << GLMRT_BINARY << " train --config " << testing::source_path("tests/golden/train_config.yaml")
      << " --set train.steps=100000 --set train.log_interval=1 --threads 1 > out.txt 2>&1 &\n"
      << "pid=$!\n"
      << "for i in $(seq 1 300); do grep -q 'iteration        3/' out.txt 2>/dev/null && break; sleep 0.1; done\n"
      << "kill -USR1 $pid; wait $pid; echo rc=$?\n";
  auto r = testing::run_command("timeout 120 bash " + script);
  EXPECT_NE(r.output.find("rc=0"), std::string::npos) << r.output;
  std::ifstream out(dir + "/out.txt");
  std::string text((std::istreambuf_iterator<char>(out)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("SIGUSR1 received: stopping at the step boundary"), std::string::npos) << text;
  std::ifstream metrics(dir + "/run/metrics.jsonl");
  int lines = 0;
  for (std::string line; std::getline(metrics, line);) ++lines;
  EXPECT_GE(lines, 3);
  EXPECT_LT(lines, 100000);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace glmrt
