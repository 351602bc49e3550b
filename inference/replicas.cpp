#include "inference/replicas.h"

#include <cstdio>
#include <exception>
#include <optional>
#include <string>
#include <thread>

#include "inference/wire.h"
#include "kernels/error.h"
#include "parallel/communicator.h"

namespace glmrt {

namespace {

using namespace wire;
using Clock = std::chrono::steady_clock;

constexpr int kCommandTag = 1;  // rank 0 → a replica's root
constexpr int kEventTag = 2;    // a replica's root → rank 0

// Records in a command message (one message may hold several).
enum Command : int64_t { kNew = 1, kCancel = 2, kClose = 3, kBye = 4 };
// Records in an event message.
enum Event : int64_t { kToken = 1, kDone = 2, kFinished = 3 };

constexpr auto kIdleWait = std::chrono::milliseconds(100);
constexpr auto kPollInterval = std::chrono::milliseconds(1);

// Polling between messages: 50 µs after traffic, doubling to kPollInterval while none comes. A
// fixed 1 ms added up to a millisecond to every hop of a request and of its tokens, which on the
// tiny model is a whole decoding step.
class PollBackoff {
 public:
  std::chrono::microseconds next() {
    const auto wait = wait_;
    wait_ = std::min<std::chrono::microseconds>(wait_ * 2, kPollInterval);
    return wait;
  }
  void reset() { wait_ = kFirst; }

 private:
  static constexpr std::chrono::microseconds kFirst{50};
  std::chrono::microseconds wait_ = kFirst;
};

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    throw CommError(std::string("serve replicas: ") + what + ": " + std::string(msg, static_cast<size_t>(len)));
  }
}

}  // namespace

// ---- ReplicaChannel -------------------------------------------------------------------------

ReplicaChannel::ReplicaChannel(ProcessGroups& g) : g_(g) {
  check(MPI_Comm_dup(g.world->comm(), &comm_), "MPI_Comm_dup");
}

ReplicaChannel::~ReplicaChannel() {
  if (std::uncaught_exceptions() > 0) return;  // the job is being aborted: do not wait on peers
  try {
    flush();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "glmrt serve: %s\n", e.what());  // freeing would wait on that peer
    return;
  }
  MPI_Comm_free(&comm_);
}

void ReplicaChannel::send(int peer, int tag, std::vector<int64_t> msg) {
  pending_.push_back(Pending{MPI_REQUEST_NULL, std::move(msg), peer});
  Pending& p = pending_.back();
  check(MPI_Isend(p.data.data(), static_cast<int>(p.data.size()), MPI_INT64_T, peer, tag, comm_, &p.request),
        "MPI_Isend");
  progress();
}

void ReplicaChannel::progress() {
  for (auto it = pending_.begin(); it != pending_.end();) {
    int done = 0;
    check(MPI_Test(&it->request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    it = done ? pending_.erase(it) : std::next(it);
  }
}

bool ReplicaChannel::poll(int source, int tag, std::vector<int64_t>& msg, int& from) {
  progress();
  int flag = 0;
  MPI_Status status;
  check(MPI_Iprobe(source, tag, comm_, &flag, &status), "MPI_Iprobe");
  if (!flag) return false;
  int count = 0;
  check(MPI_Get_count(&status, MPI_INT64_T, &count), "MPI_Get_count");
  msg.resize(static_cast<size_t>(count));
  from = status.MPI_SOURCE;
  check(MPI_Recv(msg.data(), count, MPI_INT64_T, from, tag, comm_, MPI_STATUS_IGNORE), "MPI_Recv");
  return true;
}

void ReplicaChannel::flush() {
  const auto deadline = Clock::now() + g_.timeout;
  while (true) {
    progress();
    if (pending_.empty()) return;
    if (Clock::now() > deadline) {
      std::string peers;
      for (const Pending& p : pending_) peers += (peers.empty() ? "" : ", ") + std::to_string(p.peer);
      throw CommError("serve replicas: messages to world rank(s) " + peers + " not received within " +
                      std::to_string(g_.timeout.count()) + " s");
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

// ---- ReplicaRouter (world rank 0) -------------------------------------------------------------

ReplicaRouter::ReplicaRouter(ReplicaChannel& channel, RequestQueue& queue, int64_t max_batch)
    : ch_(channel), queue_(queue), max_batch_(max_batch) {
  const Topology& topo = ch_.groups().topo;
  replicas_ = topo.layout().data;
  for (int d = 0; d < replicas_; ++d) roots_.push_back(topo.rank_of({0, d, 0}));
  in_flight_.assign(static_cast<size_t>(replicas_), 0);
  answered_.assign(static_cast<size_t>(replicas_), 0);
  finished_.assign(static_cast<size_t>(replicas_), false);
  finished_[0] = true;  // replica 0 is the caller's engine: finish() is called when it has ended
  thread_ = std::thread([this] { run(); });
}

ReplicaRouter::~ReplicaRouter() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void ReplicaRouter::rethrow() {
  std::lock_guard<std::mutex> lock(mu_);
  if (error_) std::rethrow_exception(error_);
}

// Each replica takes up to 2 · max_batch: max_batch in flight and as many waiting at its root, so
// that a replica finds its next request at hand when a query ends instead of a message later.
int ReplicaRouter::pick_replica() {
  int best = -1;
  int64_t best_load = 0;
  for (int i = 0; i < replicas_; ++i) {
    const int d = (turn_ + i) % replicas_;
    const int64_t load = d == 0 ? local_in_flight_.load() : in_flight_[static_cast<size_t>(d)];
    if (load < 2 * max_batch_ && (best < 0 || load < best_load)) {
      best = d;
      best_load = load;
    }
  }
  if (best >= 0) turn_ = (best + 1) % replicas_;
  return best;
}

bool ReplicaRouter::route(std::chrono::microseconds wait) {
  int64_t room = std::max<int64_t>(0, 2 * max_batch_ - local_in_flight_.load());
  for (int d = 1; d < replicas_; ++d) room += std::max<int64_t>(0, 2 * max_batch_ - in_flight_[static_cast<size_t>(d)]);
  if (room == 0 || close_sent_) {
    std::this_thread::sleep_for(wait);
    return false;
  }
  bool routed = false;
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(replicas_));
  std::vector<PendingRequest> mine;
  for (PendingRequest& r : queue_.take(static_cast<size_t>(room), wait)) {
    routed = true;
    const int d = pick_replica();  // room was counted above: there is one
    if (d == 0) {
      ++local_in_flight_;  // counted out when replica 0's engine answers it (on its thread)
      r.on_done = [this, done = std::move(r.on_done)](const GenerationResult& res) {
        --local_in_flight_;
        ++local_answered_;
        if (done) done(res);
      };
      mine.push_back(std::move(r));
      continue;
    }
    ++in_flight_[static_cast<size_t>(d)];
    const uint64_t id = next_id_++;
    std::vector<int64_t>& msg = out[static_cast<size_t>(d)];
    msg.insert(msg.end(), {kNew, static_cast<int64_t>(id)});
    put_ints(msg, r.request.prompt_ids);
    put_params(msg, r.request.params);
    remote_[id] = Remote{d, std::move(r), false};
  }
  for (int d = 1; d < replicas_; ++d)
    if (!out[static_cast<size_t>(d)].empty())
      ch_.send(roots_[static_cast<size_t>(d)], kCommandTag, std::move(out[static_cast<size_t>(d)]));
  if (!mine.empty()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (PendingRequest& r : mine) local_.push_back(std::move(r));
    }
    cv_.notify_all();
  }
  return routed;
}

bool ReplicaRouter::read_events() {
  std::vector<int64_t> msg;
  int from = 0;
  bool any = false;
  while (ch_.poll(MPI_ANY_SOURCE, kEventTag, msg, from)) {
    any = true;
    int d = 0;
    while (d < replicas_ && roots_[static_cast<size_t>(d)] != from) ++d;
    GLMRT_CHECK(d > 0 && d < replicas_, "serve replicas: an event from world rank ", from,
                ", which is no replica's root");
    for (const int64_t* q = msg.data(); q < msg.data() + msg.size();) {
      const int64_t kind = *q++;
      if (kind == kFinished) {
        finished_[static_cast<size_t>(d)] = true;
        ch_.send(from, kCommandTag, {kBye});
        continue;
      }
      const uint64_t id = static_cast<uint64_t>(*q++);
      const auto it = remote_.find(id);
      GLMRT_CHECK(it != remote_.end() && it->second.replica == d, "serve replicas: replica ", d,
                  " reported on query ", id, ", which it does not hold");
      PendingRequest& r = it->second.request;
      if (kind == kToken) {
        const auto token = static_cast<int32_t>(*q++);
        const int64_t blank = *q++;
        std::optional<TokenLogprobs> lp;
        if (*q++ != 0) lp = get_logprobs(q);
        if (r.on_token) r.on_token(token, blank, lp ? &*lp : nullptr);
      } else {
        GLMRT_CHECK(kind == kDone, "serve replicas: unknown event ", kind, " from replica ", d);
        const GenerationResult res = get_result(q);
        --in_flight_[static_cast<size_t>(d)];
        ++answered_[static_cast<size_t>(d)];
        if (r.on_done) r.on_done(res);
        remote_.erase(it);
      }
    }
  }
  return any;
}

// A client gone: its replica drops the query between two steps and answers kCancelled.
void ReplicaRouter::send_cancels() {
  std::vector<std::vector<int64_t>> cancels(static_cast<size_t>(replicas_));
  for (auto& [id, remote] : remote_)
    if (!remote.cancel_sent && remote.request.cancelled && remote.request.cancelled()) {
      remote.cancel_sent = true;
      cancels[static_cast<size_t>(remote.replica)].insert(cancels[static_cast<size_t>(remote.replica)].end(),
                                                          {kCancel, static_cast<int64_t>(id)});
    }
  for (int d = 1; d < replicas_; ++d)
    if (!cancels[static_cast<size_t>(d)].empty())
      ch_.send(roots_[static_cast<size_t>(d)], kCommandTag, std::move(cancels[static_cast<size_t>(d)]));
}

void ReplicaRouter::run() {
  try {
    PollBackoff backoff;
    while (!stop_.load()) {
      const bool events = read_events();
      send_cancels();
      // Waits on the queue (or sleeps when every replica is full) for the back-off's time.
      if (route(backoff.next()) || events) backoff.reset();
      if (!close_sent_ && queue_.closed() && queue_.size() == 0) {
        close_sent_ = true;
        for (int d = 1; d < replicas_; ++d) ch_.send(roots_[static_cast<size_t>(d)], kCommandTag, {kClose});
        {
          std::lock_guard<std::mutex> lock(mu_);
          local_closed_ = true;
        }
        cv_.notify_all();
      }
      bool all_finished = close_sent_;
      for (const bool f : finished_) all_finished = all_finished && f;
      if (all_finished) return;
    }
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
    }
    cv_.notify_all();
  }
}

std::vector<PendingRequest> ReplicaRouter::take(size_t max, bool idle) {
  std::unique_lock<std::mutex> lock(mu_);
  if (idle)
    cv_.wait_for(lock, kIdleWait, [&] { return !local_.empty() || local_closed_ || error_; });
  if (error_) std::rethrow_exception(error_);
  return take_front(local_, max);
}

bool ReplicaRouter::exhausted() {
  std::lock_guard<std::mutex> lock(mu_);
  if (error_) std::rethrow_exception(error_);
  return local_closed_ && local_.empty();
}

std::vector<int64_t> ReplicaRouter::finish() {
  if (thread_.joinable()) thread_.join();
  rethrow();
  std::vector<int64_t> out = answered_;
  out[0] = local_answered_.load();
  return out;
}

// ---- ReplicaClient (the root of replica d > 0) --------------------------------------------------

ReplicaClient::ReplicaClient(ReplicaChannel& channel) : ch_(channel) {}

void ReplicaClient::send_events() {
  if (events_.empty()) return;
  ch_.send(0, kEventTag, std::move(events_));
  events_.clear();
}

void ReplicaClient::read_commands() {
  std::vector<int64_t> msg;
  int from = 0;
  while (ch_.poll(0, kCommandTag, msg, from)) {
    for (const int64_t* q = msg.data(); q < msg.data() + msg.size();) {
      const int64_t kind = *q++;
      if (kind == kClose) {
        closed_ = true;
      } else if (kind == kBye) {
        bye_ = true;
      } else if (kind == kCancel) {
        cancelled_.insert(static_cast<uint64_t>(*q++));
      } else {
        GLMRT_CHECK(kind == kNew, "serve replicas: unknown command ", kind, " from world rank 0");
        const auto id = static_cast<uint64_t>(*q++);
        PendingRequest r;
        r.request.prompt_ids = get_ints(q);
        r.request.params = get_params(q);
        r.on_token = [this, id](int32_t token, int64_t blank, const TokenLogprobs* lp) {
          events_.insert(events_.end(), {kToken, static_cast<int64_t>(id), token, blank, lp ? 1 : 0});
          if (lp) put_logprobs(events_, *lp);
        };
        r.on_done = [this, id](const GenerationResult& res) {
          events_.insert(events_.end(), {kDone, static_cast<int64_t>(id)});
          put_result(events_, res);
          cancelled_.erase(id);
        };
        r.cancelled = [this, id] { return cancelled_.count(id) > 0; };
        pending_.push_back(std::move(r));
      }
    }
  }
}

void ReplicaClient::pump() {
  send_events();
  read_commands();
}

std::vector<PendingRequest> ReplicaClient::take(size_t max, bool idle) {
  const auto deadline = Clock::now() + (idle ? kIdleWait : std::chrono::milliseconds(0));
  pump();
  PollBackoff backoff;
  while (idle && pending_.empty() && !closed_ && Clock::now() < deadline) {
    std::this_thread::sleep_for(backoff.next());
    read_commands();
  }
  return take_front(pending_, max);
}

void ReplicaClient::finish() {
  events_.push_back(kFinished);
  send_events();
  const auto deadline = Clock::now() + ch_.groups().timeout;
  while (true) {
    read_commands();  // late cancellations of queries already answered are dropped with them
    if (bye_) return;
    if (Clock::now() > deadline)
      throw CommError("serve replicas: world rank 0 did not acknowledge this replica's end within " +
                      std::to_string(ch_.groups().timeout.count()) + " s");
    std::this_thread::sleep_for(kPollInterval);
  }
}

}  // namespace glmrt
