#include "tests/test_util.h"

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <unistd.h>

namespace glmrt::testing {

namespace {

// The variables by which Open MPI / PMIx tell a process which job it belongs to. A test process
// that started an MPI singleton (the in-process engine tests) holds them, and a child mpiexec or
// glmrt that inherited them would try to join that job instead of starting its own.
bool is_job_identity(const std::string& name) {
  static const char* const prefixes[] = {"PMIX_", "ORTE_", "OMPI_MCA_orte_", "OMPI_APP_CTX_",
                                         "OMPI_COMM_WORLD_", "OMPI_FIRST_RANKS", "OMPI_NUM_APP_CTX",
                                         "OMPI_UNIVERSE_SIZE", "OMPI_ARGV", "OMPI_COMMAND",
                                         "OMPI_FILE_LOCATION"};
  for (const char* p : prefixes)
    if (name.rfind(p, 0) == 0) return true;
  return name == "OMPI_MCA_ess" || name == "OMPI_MCA_pmix" || name == "OMPI_MCA_initial_wdir";
}

// `command` for sh, run with the job-identity variables of this process removed.
std::string without_job_identity(const std::string& command) {
  std::string unset;
  for (char** e = environ; *e; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    if (is_job_identity(name)) unset += " -u " + name;
  }
  if (unset.empty()) return command;
  std::string quoted;
  for (const char c : command) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return "env" + unset + " sh -c '" + quoted + "'";
}

}  // namespace

CommandResult run_command(const std::string& command) {
  CommandResult r{-1, ""};
  FILE* pipe = ::popen((without_job_identity(command) + " 2>&1").c_str(), "r");
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

std::string ids_csv(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ids[i]);
  }
  return s;
}

std::string edited_copy(const std::string& src, const std::string& from, const std::string& to,
                        const std::string& dst) {
  std::ifstream in(src);
  std::stringstream text;
  text << in.rdbuf();
  std::string s = text.str();
  const size_t at = s.find(from);
  if (at == std::string::npos) throw std::runtime_error(src + " holds no '" + from + "'");
  s.replace(at, from.size(), to);
  std::ofstream(dst) << s;
  return dst;
}

}  // namespace glmrt::testing
