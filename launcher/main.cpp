// glmrt: one executable, one subcommand per job.
#include <boost/program_options/errors.hpp>
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
        "  train     train on one rank: --config C.yaml [--init-weights W] [--output-weights W]\n\n"
        "`glmrt <command> --help` lists a command's options.\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? std::cerr : std::cout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const glmrt::Args args(argv + 2, argv + argc);
  try {
    if (command == "forward") return glmrt::run_forward(args);
    if (command == "init") return glmrt::run_init(args);
    if (command == "train") return glmrt::run_train(args);
    std::cerr << "glmrt: unknown command '" << command << "'\n\n";
    usage(std::cerr);
    return 2;
  } catch (const boost::program_options::error& e) {
    std::cerr << "glmrt " << command << ": " << e.what() << " (see glmrt " << command
              << " --help)\n";
    return 2;
  } catch (const glmrt::Error& e) {
    std::cerr << "glmrt " << command << ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "glmrt " << command << ": unexpected error: " << e.what() << "\n";
    return 1;
  }
}
