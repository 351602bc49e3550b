// The glmrt subcommands. Each takes its own arguments (after the subcommand name) and returns
// the process exit code; errors are thrown as glmrt::Error and reported by main().
#pragma once

#include <string>
#include <vector>

namespace glmrt {

using Args = std::vector<std::string>;

int run_forward(const Args& args);
int run_init(const Args& args);
int run_train(const Args& args);
int run_data_sample(const Args& args);
int run_preprocess(const Args& args);
int run_train_tokenizer(const Args& args);
int run_reshard(const Args& args);
int run_import_sat(const Args& args);
int run_quantize(const Args& args);
int run_generate(const Args& args);
int run_serve(const Args& args);

}  // namespace glmrt
