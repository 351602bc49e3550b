// Typed errors. Every message names the file, key, rank or value at fault; the launcher prints it
// once and exits non-zero.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace glmrt {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Bad configuration (YAML, CLI flags).
class ConfigError : public Error {
 public:
  using Error::Error;
};

// Bad user data: input JSON, token ids, positions, masks, samples.
class InputError : public Error {
 public:
  using Error::Error;
};

// Bad weights or checkpoints: missing, extra or mis-shaped tensors, corrupt files.
class CheckpointError : public Error {
 public:
  using Error::Error;
};

// A broken internal invariant (shape mismatch between ops, wrong dtype): a bug, not bad input.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}
}  // namespace detail

}  // namespace glmrt

// GLMRT_CHECK(cond, parts...): throws InternalError naming the failed condition and its location.
#define GLMRT_CHECK(cond, ...)                                                                   \
  do {                                                                                           \
    if (!(cond))                                                                                 \
      throw ::glmrt::InternalError(::glmrt::detail::concat(__FILE__, ":", __LINE__, ": check `", \
                                                           #cond, "` failed: ", ##__VA_ARGS__)); \
  } while (0)
