// glmrt: one executable, one subcommand per job. Every command runs under MPI (a plain start is
// a job of one rank): the first error on any rank is printed once, naming the rank, and ends the
// whole job with a non-zero code, so a failing rank never leaves the others hanging.
#include <mpi.h>

#include <boost/program_options/errors.hpp>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>

#include "kernels/error.h"
#include "launcher/commands.h"

namespace {

void usage(std::ostream& os) {
  os << "usage: glmrt <command> [options]\n\n"
        "commands:\n"
        "  forward   logits of a batch: --config C.yaml --weights W.safetensors --input in.json\n"
        "            --output out.safetensors\n"
        "  init      write seeded initial weights: --config C.yaml --output W.safetensors [--seed S]\n"
        "  train     train: --config C.yaml [--init-weights W] [--output-weights W]\n"
        "  train-tokenizer  a sentencepiece model: --input FILE... --vocab-size N --output M.model\n"
        "  preprocess  text or JSON lines to token files: --config C.yaml --input FILE... --output PREFIX\n"
        "  data-sample print GLM samples built from the token files: --config C.yaml --count N\n"
        "  reshard   a checkpoint for another layout: --config C --from DIR --to DIR --tensor T --pipeline P\n"
        "  import-sat  the released GLM-130B (SAT) checkpoint to glmrt's: --config C --from DIR --to DIR\n"
        "  quantize  a pre-quantized (INT8/INT4) weight-only checkpoint: --config C (--weights W | --from DIR)\n"
        "            --to DIR --quantization-bit-width 8|4 [--tensor T] [--pipeline P]\n"
        "  generate  fill blanks: --config C (--weights W | --load DIR) [--prompt TEXT | --input-file F]\n"
        "  serve     HTTP generation server on rank 0: --config C (--weights W | --load DIR) [--port 8000]\n\n"
        "Run under mpiexec or srun for several ranks; the layout comes from the config's\n"
        "`parallel` section or --tensor/--pipeline/--data.\n"
        "`glmrt <command> --help` lists a command's options.\n";
}

// Ends the job: with several ranks MPI_Abort brings every process down at once.
[[noreturn]] void fail(int code) {
  int initialized = 0, finalized = 0, size = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
    MPI_Finalize();
  }
  std::exit(code);
}

int run(const std::string& command, const glmrt::Args& args) {
  if (command == "forward") return glmrt::run_forward(args);
  if (command == "init") return glmrt::run_init(args);
  if (command == "train") return glmrt::run_train(args);
  if (command == "data-sample") return glmrt::run_data_sample(args);
  if (command == "preprocess") return glmrt::run_preprocess(args);
  if (command == "train-tokenizer") return glmrt::run_train_tokenizer(args);
  if (command == "reshard") return glmrt::run_reshard(args);
  if (command == "import-sat") return glmrt::run_import_sat(args);
  if (command == "quantize") return glmrt::run_quantize(args);
  if (command == "generate") return glmrt::run_generate(args);
  if (command == "serve") return glmrt::run_serve(args);
  std::cerr << "glmrt: unknown command '" << command << "'\n\n";
  usage(std::cerr);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? std::cerr : std::cout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const glmrt::Args args(argv + 2, argv + argc);
  int provided = 0, rank = 0, size = 1;
  // serve's world rank 0 routes requests to data-parallel replicas on a thread of its own (MPI
  // calls from two threads); every other command calls MPI from its main thread only.
  MPI_Init_thread(&argc, &argv, command == "serve" ? MPI_THREAD_MULTIPLE : MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::string who = size > 1 ? "rank " + std::to_string(rank) + ": " : "";
  int code = 0;
  try {
    code = run(command, args);
  } catch (const boost::program_options::error& e) {
    std::fprintf(stderr, "glmrt %s: %s%s (see glmrt %s --help)\n", command.c_str(), who.c_str(),
                 e.what(), command.c_str());
    fail(2);
  } catch (const glmrt::Error& e) {
    std::fprintf(stderr, "glmrt %s: %serror: %s\n", command.c_str(), who.c_str(), e.what());
    fail(1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "glmrt %s: %sunexpected error: %s\n", command.c_str(), who.c_str(), e.what());
    fail(1);
  }
  if (code != 0) fail(code);
  MPI_Finalize();
  return 0;
}
