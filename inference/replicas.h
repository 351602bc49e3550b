// Data-parallel replicas behind one `glmrt serve` endpoint.
//
// World rank 0 (replica 0's root) holds the HTTP request queue. Its ReplicaRouter hands each
// request to the replica with the fewest queries in flight that still has room under max_batch
// (ties in turn), either to replica 0's own engine or, as a message, to another replica's root.
// There a ReplicaClient feeds the request to that replica's engine and sends back each generated
// token (for streaming, with its log-probabilities when asked) and the result. A cancellation (a
// streaming client gone) travels the other way. Requests wait in the queue while every replica
// is full.
//
// The messages are host MPI on a duplicate of the world communicator. On rank 0 a thread of
// its own handles them (MPI_THREAD_MULTIPLE), polling every millisecond; another replica's root
// sends and reads them between its own steps. Neither side ever waits for the other's steps.
//
// Shutdown: once the queue is closed and drained, rank 0 sends every other root CLOSE. A root
// that has it finishes its queries, sends FINISHED after its last result and waits for BYE,
// which rank 0 sends when it reads FINISHED. Replica 0's engine ends once every replica has
// finished, so no result is lost and no message is left unread.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "inference/request_queue.h"
#include "parallel/process_groups.h"

namespace glmrt {

// The message channel between world rank 0 and the replicas' roots. Every rank of the job
// constructs one (MPI_Comm_dup is collective) and destroys it (waiting for its sends; when an
// exception is unwinding, it neither waits nor frees: the job is about to be aborted).
class ReplicaChannel {
 public:
  explicit ReplicaChannel(ProcessGroups& g);
  ~ReplicaChannel();
  ReplicaChannel(const ReplicaChannel&) = delete;
  ReplicaChannel& operator=(const ReplicaChannel&) = delete;

  // Non-blocking send of `msg` (kept until delivered) to world rank `peer` with `tag`.
  void send(int peer, int tag, std::vector<int64_t> msg);
  // Receives one waiting message with `tag` from `source` (MPI_ANY_SOURCE: any); false if none.
  bool poll(int source, int tag, std::vector<int64_t>& msg, int& from);
  // Waits for every send; throws naming the peers when one is still pending after the timeout.
  void flush();

  ProcessGroups& groups() { return g_; }

 private:
  struct Pending {
    MPI_Request request;
    std::vector<int64_t> data;
    int peer;
  };
  void progress();  // drops completed sends

  ProcessGroups& g_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::list<Pending> pending_;
};

// World rank 0's side. A thread of its own routes the queued requests, relays the other
// replicas' tokens and results to their callbacks (which must be thread-safe: the HTTP server's
// are), and sends their clients' cancellations; replica 0's engine takes its share through the
// Source calls below. So routing never waits for a step of replica 0 (a long prefill there would
// otherwise leave the other replicas idle). The thread makes MPI calls while the engine's thread
// makes its own: MPI must provide MPI_THREAD_MULTIPLE.
class ReplicaRouter {
 public:
  // Starts the routing thread.
  ReplicaRouter(ReplicaChannel& channel, RequestQueue& queue, int64_t max_batch);
  ~ReplicaRouter();  // stops and joins the thread (also when an exception unwinds)
  ReplicaRouter(const ReplicaRouter&) = delete;
  ReplicaRouter& operator=(const ReplicaRouter&) = delete;

  // Replica 0's next requests (up to `max`); `idle`: waits up to 100 ms for one. Rethrows the
  // routing thread's failure.
  std::vector<PendingRequest> take(size_t max, bool idle);
  // No request will come to replica 0 any more: the queue is closed and drained.
  bool exhausted();
  // After replica 0's engine has ended: waits until every other replica has finished, then
  // returns the queries each replica answered. Rethrows the routing thread's failure.
  std::vector<int64_t> finish();

 private:
  struct Remote {
    int replica = 0;
    PendingRequest request;  // its callbacks
    bool cancel_sent = false;
  };
  void run();  // the routing thread
  bool read_events();  // whether any event came
  void send_cancels();
  bool route(std::chrono::microseconds wait);  // whether any request was routed
  int pick_replica();  // -1 when every replica is full
  void rethrow();

  ReplicaChannel& ch_;
  RequestQueue& queue_;
  int64_t max_batch_;
  int replicas_;
  std::vector<int> roots_;  // world rank of each replica's root
  // The routing thread's; replica 0's counts are atomics (its engine answers on its own thread).
  std::vector<int64_t> in_flight_, answered_;
  std::atomic<int64_t> local_in_flight_{0}, local_answered_{0};
  std::vector<bool> finished_;
  int turn_ = 0;  // where the next tie goes
  uint64_t next_id_ = 0;
  std::map<uint64_t, Remote> remote_;
  bool close_sent_ = false;

  std::mutex mu_;  // guards local_, local_closed_, error_
  std::condition_variable cv_;
  std::deque<PendingRequest> local_;
  bool local_closed_ = false;
  std::exception_ptr error_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The root of replica d > 0: the engine Source of its replica.
class ReplicaClient {
 public:
  explicit ReplicaClient(ReplicaChannel& channel);

  // Sends the tokens and results since the last call, then reads rank 0's commands (requests,
  // cancellations, CLOSE). Non-blocking; the engine calls it at the start of every step, also
  // when its replica is too full to take requests.
  void pump();
  // pump(), then up to `max` of the requests received. `idle`: waits up to 100 ms for one (or
  // for CLOSE).
  std::vector<PendingRequest> take(size_t max, bool idle);
  bool exhausted() const { return closed_ && pending_.empty(); }
  // After the engine ended: sends the last events and FINISHED, then waits for BYE.
  void finish();

 private:
  void read_commands();
  void send_events();

  ReplicaChannel& ch_;
  std::deque<PendingRequest> pending_;
  std::set<uint64_t> cancelled_;
  std::vector<int64_t> events_;
  bool closed_ = false, bye_ = false;
};

}  // namespace glmrt
