#include "tests/test_util.h"

#include <array>
#include <cstdio>
#include <filesystem>
#include <unistd.h>

namespace glmrt::testing {

CommandResult run_command(const std::string& command) {
  CommandResult r{-1, ""};
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

CommandResult run_glmrt(const std::string& args) {
  // ob1 skips UCX start-up (~0.25 s per run); the tests are single-host anyway.
  return run_command("OMPI_MCA_pml=ob1 " + std::string(GLMRT_BINARY) + " " + args);
}

std::string temp_dir(const std::string& name) {
  namespace fs = std::filesystem;
  fs::path p = fs::temp_directory_path() /
               ("glmrt_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

}  // namespace glmrt::testing
