// Boost.Program_options helpers shared by the subcommands.
#pragma once

#include <boost/program_options.hpp>
#include <optional>
#include <string>

#include "kernels/tensor.h"
#include "launcher/commands.h"

namespace glmrt {

namespace po = boost::program_options;

// Parses `args` against `desc`; prints help and returns false for --help. Positional arguments and
// unknown options are errors. Every option marked required() must be present.
bool parse_options(const std::string& command, po::options_description& desc, const Args& args,
                   po::variables_map& vm);

// Adds --set key=value (repeatable) to `desc`; config_overrides() reads them.
void add_set_option(po::options_description& desc);
std::vector<std::string> config_overrides(const po::variables_map& vm);

// The offline checkpoint tools (reshard, import-sat, quantize) are one process writing one folder:
// started on several ranks (mpiexec -n N, srun with N tasks) they would all write the same files.
// Throws ConfigError naming the command and the rank count when the job has more than one rank.
void require_one_process(const std::string& command);

// --dtype of the offline checkpoint tools (import-sat, quantize): the dtype the unquantized weights
// are stored in; nullopt for `keep` (the source's). ConfigError naming the flag otherwise.
std::optional<DType> stored_dtype_option(const std::string& value);
// A checkpoint manifest's `precision` for weights stored as `dtype`: fp16, bf16 or fp32.
const char* precision_of(DType dtype);

// Adds --device, --dtype and --threads to `desc`.
void add_compute_options(po::options_description& desc);
struct ComputeOptions {
  Device device;
  DType dtype;
};
// Reads and validates the compute options; sets the CPU thread count when --threads is given.
ComputeOptions compute_options(const po::variables_map& vm);

}  // namespace glmrt
