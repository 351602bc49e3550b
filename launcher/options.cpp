#include "launcher/options.h"

#include <cblas.h>
#include <mpi.h>
#include <omp.h>

#include <iostream>

#include "kernels/ops.h"

namespace glmrt {

bool parse_options(const std::string& command, po::options_description& desc, const Args& args,
                   po::variables_map& vm) {
  desc.add_options()("help,h", "print this help");
  po::store(po::command_line_parser(args).options(desc).run(), vm);
  if (vm.count("help")) {
    std::cout << "usage: glmrt " << command << " [options]\n" << desc << "\n";
    return false;
  }
  po::notify(vm);
  return true;
}

void add_set_option(po::options_description& desc) {
  desc.add_options()("set", po::value<std::vector<std::string>>()->composing(),
                     "override a config key: --set train.steps=100 (repeatable)");
}

std::vector<std::string> config_overrides(const po::variables_map& vm) {
  return vm.count("set") ? vm["set"].as<std::vector<std::string>>() : std::vector<std::string>{};
}

void add_compute_options(po::options_description& desc) {
  desc.add_options()
    ("device", po::value<std::string>()->default_value("cpu"), "cpu or cuda")
    ("dtype", po::value<std::string>()->default_value("f32"),
     "compute dtype of forward: f32, f64 (cpu), f16 or bf16 (16-bit storage, fp32 compute)")
    ("threads", po::value<int>(), "CPU threads for BLAS and OpenMP (default: the environment's)");
}

ComputeOptions compute_options(const po::variables_map& vm) {
  ComputeOptions o;
  const std::string dev = vm["device"].as<std::string>();
  if (dev == "cpu") {
    o.device = Device::cpu();
  } else if (dev == "cuda") {
    if (!cuda_built()) throw ConfigError("--device cuda: this glmrt was built without CUDA");
    const int gpus = cuda_device_count();
    if (gpus == 0) throw ConfigError("--device cuda: no CUDA device is visible");
    // One GPU per rank of a node: the rank's index among the ranks sharing its node.
    MPI_Comm node;
    int local = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    o.device = Device::cuda(local % gpus);
    cuda_set_device(o.device.index);
  } else {
    throw ConfigError("--device: expected cpu or cuda, got '" + dev + "'");
  }
  const std::string dt = vm["dtype"].as<std::string>();
  if (dt == "f32") o.dtype = DType::F32;
  else if (dt == "f64") o.dtype = DType::F64;
  else if (dt == "f16") o.dtype = DType::F16;
  else if (dt == "bf16") o.dtype = DType::BF16;
  else throw ConfigError("--dtype: expected f32, f64, f16 or bf16, got '" + dt + "'");
  if (o.device.is_cuda() && o.dtype == DType::F64)
    throw ConfigError("--dtype f64: the CUDA backend computes in f32, f16 or bf16");
  if (vm.count("threads")) {
    const int t = vm["threads"].as<int>();
    if (t < 1) throw ConfigError("--threads: must be at least 1, got " + std::to_string(t));
    openblas_set_num_threads(t);
    omp_set_num_threads(t);
  }
  return o;
}

void require_one_process(const std::string& command) {
  int ranks = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  if (ranks > 1)
    throw ConfigError("glmrt " + command + " is one offline process (it streams the model one tensor at a time "
                      "and uses every core); this job has " + std::to_string(ranks) +
                      " ranks, which would all write the same files: run it without mpiexec or srun");
}

std::optional<DType> stored_dtype_option(const std::string& value) {
  if (value == "keep") return std::nullopt;
  if (value == "f32") return DType::F32;
  if (value == "f16") return DType::F16;
  if (value == "bf16") return DType::BF16;
  throw ConfigError("--dtype: expected keep, f32, f16 or bf16, got '" + value + "'");
}

const char* precision_of(DType dtype) {
  switch (dtype) {
    case DType::F16: return "fp16";
    case DType::BF16: return "bf16";
    default: return "fp32";
  }
}

}  // namespace glmrt
