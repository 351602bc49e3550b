// Queries, parameters and results as flat I64 payloads, for the messages between ranks of the
// generation engine (control broadcasts, data-parallel shares, the replicas of `glmrt serve`).
// Doubles and floats travel as their bits, so nothing is lost. Readers advance `q` past what
// they read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "inference/generation.h"

namespace glmrt::wire {

void put_double(std::vector<int64_t>& v, double x);
double get_double(int64_t bits);
// fp32 values in I32 records (their bits).
int32_t fp32_bits(float x);
float fp32_from_bits(int32_t bits);

void put_ints(std::vector<int64_t>& v, const std::vector<int32_t>& ids);
std::vector<int32_t> get_ints(const int64_t*& q);
void put_string(std::vector<int64_t>& v, const std::string& s);
std::string get_string(const int64_t*& q);
void put_params(std::vector<int64_t>& v, const GenerationParams& p);
GenerationParams get_params(const int64_t*& q);
void put_logprobs(std::vector<int64_t>& v, const TokenLogprobs& lp);
TokenLogprobs get_logprobs(const int64_t*& q);
void put_result(std::vector<int64_t>& v, const GenerationResult& r);
GenerationResult get_result(const int64_t*& q);

}  // namespace glmrt::wire
