// The hand-over between request producers (HTTP handler threads, the interactive prompt) and the
// generation engine's thread on world rank 0. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <vector>

#include "inference/generation.h"

namespace glmrt {

// result.error of a query dropped through PendingRequest::cancelled.
inline constexpr const char* kCancelled = "cancelled by the client";

struct PendingRequest {
  GenerationRequest request;
  // Called from the engine thread for each generated token of the query's current blank, in order
  // (blank = 0-based index of the blank being filled). Not called for beam search (its tokens
  // are known only when the blank ends). `logprobs`: the token's log-probabilities when the query
  // asked for them (params.logprobs >= 0), else null. May be empty.
  std::function<void(int32_t token, int64_t blank, const TokenLogprobs* logprobs)> on_token;
  // Called exactly once from the engine thread when the query ends (result.error set on failure).
  std::function<void(const GenerationResult&)> on_done;
  // Polled from the engine thread between steps (may be empty): true drops the query, e.g. when
  // its client went away. Its cache rows are freed at once on every rank and on_done gets
  // result.error = kCancelled.
  std::function<bool()> cancelled;
};

// Up to `max` requests from the front of `from`, in order.
inline std::vector<PendingRequest> take_front(std::deque<PendingRequest>& from, size_t max) {
  std::vector<PendingRequest> out;
  while (!from.empty() && out.size() < max) {
    out.push_back(std::move(from.front()));
    from.pop_front();
  }
  return out;
}

class RequestQueue {
 public:
  // Returns false (and leaves `r` unused) when the queue is closed.
  bool push(PendingRequest r) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return false;
      queue_.push_back(std::move(r));
    }
    cv_.notify_all();
    return true;
  }
  // Up to `max` requests; waits up to `wait` when none is queued (returns early on close).
  std::vector<PendingRequest> take(size_t max, std::chrono::microseconds wait) {
    std::unique_lock<std::mutex> lock(mu_);
    if (queue_.empty() && !closed_) cv_.wait_for(lock, wait, [&] { return !queue_.empty() || closed_; });
    return take_front(queue_, max);
  }
  // No more pushes; take() still drains what is queued.
  void close() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
    }
    cv_.notify_all();
  }
  bool closed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }
  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<PendingRequest> queue_;
  bool closed_ = false;
};

}  // namespace glmrt
