// The NCCL communicator (parallel/nccl_communicator.cpp) over MPI_COMM_WORLD.
//
// A plain run is a group of one rank (an MPI singleton): every operation still goes through
// NCCL (all_reduce is the identity, send_recv to itself round-trips the data). Under
// `mpiexec -n N` with N GPUs (scripts/gpu-check.sh does so with two or more), every expectation
// is a formula in the rank and the group size, so the same tests check the sums across ranks,
// and two more run: separate send/recv between neighbours and the deadline of a peer that never
// answers. Without a GPU, or with more ranks than GPUs, every test skips.
//
// This binary has gtest_main's main: MPI is started by the first test that needs it and
// finalized after the last test (a global test environment), after the shared communicator is
// destroyed.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"
#include "parallel/group_communicator.h"

namespace glmrt {
namespace {

constexpr std::chrono::seconds kTimeout{60};

class MpiEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    world_.reset();  // NCCL finalize while MPI and CUDA are still up
    if (!started_mpi_) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }

  void start_mpi() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) return;
    int provided = 0;
    MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
    started_mpi_ = true;
  }

  // One NCCL communicator over every rank, shared by the tests (set up once: NCCL setup is slow).
  Communicator& world(int device) {
    if (!world_) world_ = make_nccl_communicator(MPI_COMM_WORLD, "test", device, kTimeout);
    return *world_;
  }

 private:
  bool started_mpi_ = false;
  std::unique_ptr<Communicator> world_;
};

// gtest owns the environment.
MpiEnvironment* const mpi_env =
    static_cast<MpiEnvironment*>(::testing::AddGlobalTestEnvironment(new MpiEnvironment));

const std::vector<DType> kAllDtypes = {DType::F32, DType::F64, DType::F16, DType::BF16,
                                       DType::I8,  DType::I32, DType::I64};

class NcclCommunicatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const int gpus = cuda::device_count();
    if (gpus == 0) GTEST_SKIP() << "no CUDA device";
    mpi_env->start_mpi();
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    if (size_ > gpus)
      GTEST_SKIP() << size_ << " ranks but " << gpus << " GPUs (NCCL needs one GPU per rank)";
    device_ = rank_ % gpus;
    comm_ = &mpi_env->world(device_);
  }

  Device gpu() const { return Device::cuda(device_); }

  // A device tensor of `dtype` holding values[i] (small integers: exact in every dtype).
  Tensor make(const std::vector<float>& values, const Shape& shape, DType dtype) const {
    return Tensor::from_floats(values, shape, DType::F32).to(dtype).to(gpu());
  }
  template <class F>
  Tensor make(const Shape& shape, DType dtype, F value) const {
    std::vector<float> v(static_cast<size_t>(shape_numel(shape)));
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(value(static_cast<int64_t>(i)));
    return make(v, shape, dtype);
  }
  static std::vector<double> host(const Tensor& t) {
    const Tensor h = t.to(Device::cpu());
    std::vector<double> v(static_cast<size_t>(h.numel()));
    for (int64_t i = 0; i < h.numel(); ++i) v[static_cast<size_t>(i)] = h.item(i);
    return v;
  }

  int rank_ = 0, size_ = 1, device_ = 0;
  Communicator* comm_ = nullptr;
};

TEST_F(NcclCommunicatorTest, KnowsItsGroup) {
  EXPECT_EQ(comm_->rank(), rank_);
  EXPECT_EQ(comm_->size(), size_);
  EXPECT_EQ(comm_->name(), "test");
}

TEST_F(NcclCommunicatorTest, AllReduceSumsEveryDtype) {
  const int n = size_;
  for (DType dtype : kAllDtypes) {
    // Rank r holds (i % 7) - 3 + r; the sum is n((i % 7) - 3) + n(n - 1)/2.
    Tensor t = make({1031}, dtype, [&](int64_t i) { return (i % 7) - 3 + rank_; });
    comm_->all_reduce(t, ReduceOp::Sum);
    const std::vector<double> got = host(t);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], n * (static_cast<double>(i % 7) - 3) + n * (n - 1) / 2.0)
          << dtype_name(dtype) << " element " << i;
  }
}

TEST_F(NcclCommunicatorTest, AllReduceMaxEveryDtype) {
  for (DType dtype : kAllDtypes) {
    // Rank r holds (i % 5) - 2 + r (the highest rank's value wins), on a 2-D tensor.
    Tensor t = make({13, 9}, dtype, [&](int64_t i) { return (i % 5) - 2 + rank_; });
    comm_->all_reduce(t, ReduceOp::Max);
    const std::vector<double> got = host(t);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], static_cast<double>(i % 5) - 2 + (size_ - 1))
          << dtype_name(dtype) << " element " << i;
  }
}

TEST_F(NcclCommunicatorTest, AllReduceOfRandomDataMatchesTheHostSum) {
  // Every rank draws every rank's data from one seed (rank 0's), so each knows the sum.
  unsigned seed = std::random_device{}();
  MPI_Bcast(&seed, 1, MPI_UNSIGNED, 0, MPI_COMM_WORLD);
  const size_t count = 4099;
  std::vector<double> sum(count, 0.0), abs_sum(count, 0.0);
  std::vector<float> mine;
  for (int r = 0; r < size_; ++r) {
    std::mt19937 rng(seed + static_cast<unsigned>(r));
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(count);
    for (size_t i = 0; i < count; ++i) {
      v[i] = dist(rng);
      sum[i] += v[i];
      abs_sum[i] += std::fabs(v[i]);
    }
    if (r == rank_) mine = v;
  }
  Tensor t = make(mine, {static_cast<int64_t>(count)}, DType::F32);
  comm_->all_reduce(t, ReduceOp::Sum);
  const std::vector<double> got = host(t);
  for (size_t i = 0; i < count; ++i)
    ASSERT_NEAR(got[i], sum[i], 1e-6 * size_ * abs_sum[i] + 1e-30) << "element " << i
                                                                   << " (seed " << seed << ")";
}

TEST_F(NcclCommunicatorTest, AllGatherConcatenatesTheRanksInOrder) {
  for (DType dtype : kAllDtypes) {
    // Rank r holds 16r + (i % 16) (at most 127 for 8 ranks: exact in I8 and BF16).
    const Tensor in = make({3, 5}, dtype, [&](int64_t i) { return 16 * rank_ + (i % 16); });
    Tensor out = make({3 * size_, 5}, dtype, [](int64_t) { return -1; });
    comm_->all_gather(in, out);
    const std::vector<double> got = host(out);
    ASSERT_EQ(got.size(), static_cast<size_t>(15 * size_));
    for (int r = 0; r < size_; ++r)
      for (int i = 0; i < 15; ++i)
        ASSERT_EQ(got[static_cast<size_t>(15 * r + i)], 16 * r + (i % 16))
            << dtype_name(dtype) << " rank " << r << " element " << i;
  }
}

TEST_F(NcclCommunicatorTest, ReduceScatterSumsEachRanksChunk) {
  const int n = size_;
  for (DType dtype : kAllDtypes) {
    // `in` is n chunks of [4, 3]; rank r holds (k % 11) + r at flat index k, so chunk c sums to
    // n((12c + i) % 11) + n(n - 1)/2 at its element i.
    const Tensor in = make({4 * n, 3}, dtype, [&](int64_t k) { return (k % 11) + rank_; });
    Tensor out = make({4, 3}, dtype, [](int64_t) { return -1; });
    comm_->reduce_scatter(in, out);
    const std::vector<double> got = host(out);
    ASSERT_EQ(got.size(), 12u);
    for (int i = 0; i < 12; ++i)
      ASSERT_EQ(got[static_cast<size_t>(i)], n * ((12 * rank_ + i) % 11) + n * (n - 1) / 2.0)
          << dtype_name(dtype) << " element " << i;
  }
}

TEST_F(NcclCommunicatorTest, BroadcastCopiesTheRootsTensor) {
  for (DType dtype : {DType::F32, DType::BF16, DType::I64}) {
    for (int root = 0; root < size_; ++root) {
      Tensor t = make({7, 11}, dtype, [&](int64_t i) { return 10 * rank_ + (i % 10); });
      comm_->broadcast(t, root);
      const std::vector<double> got = host(t);
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(got[i], 10 * root + static_cast<double>(i % 10))
            << dtype_name(dtype) << " root " << root << " element " << i;
    }
  }
}

TEST_F(NcclCommunicatorTest, SendRecvAroundTheRingDeliversThePreviousRanksData) {
  // Each rank sends to the next and receives from the previous (with one rank: to itself).
  const int next = (rank_ + 1) % size_, prev = (rank_ + size_ - 1) % size_;
  for (DType dtype : {DType::F32, DType::F16, DType::I32}) {
    // 100r + (i % 97): at most 796 for 8 ranks, exact in F16.
    const Tensor out = make({17, 33}, dtype, [&](int64_t i) { return 100 * rank_ + (i % 97); });
    Tensor in = make({17, 33}, dtype, [](int64_t) { return -1; });
    comm_->send_recv(out, next, in, prev);
    const std::vector<double> got = host(in);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(got[i], 100 * prev + static_cast<double>(i % 97))
          << dtype_name(dtype) << " element " << i;
  }
  comm_->wait_sends();
}

TEST_F(NcclCommunicatorTest, SendsKeepTheirTensorsUntilReceived) {
  if (size_ < 2) GTEST_SKIP() << "needs two ranks (mpiexec -n 2 on two GPUs)";
  // Pairs (0, 1), (2, 3), ...: the even rank sends three tensors it does not keep, then receives
  // one; the odd rank receives three, then sends one. A last odd rank out sits this out.
  const bool even = rank_ % 2 == 0;
  const int peer = even ? rank_ + 1 : rank_ - 1;
  if (peer >= size_) return;
  if (even) {
    for (int k = 0; k < 3; ++k)
      comm_->send(make({1000}, DType::F32, [&](int64_t i) { return 100 * k + (i % 100); }), peer);
    Tensor in = make({5}, DType::I64, [](int64_t) { return -1; });
    comm_->recv(in, peer);
    for (double v : host(in)) EXPECT_EQ(v, 42);
  } else {
    for (int k = 0; k < 3; ++k) {
      Tensor in = make({1000}, DType::F32, [](int64_t) { return -1; });
      comm_->recv(in, peer);
      const std::vector<double> got = host(in);
      for (size_t i = 0; i < got.size(); ++i)
        ASSERT_EQ(got[i], 100 * k + static_cast<double>(i % 100))
            << "tensor " << k << " element " << i;
    }
    comm_->send(make({5}, DType::I64, [](int64_t) { return 42; }), peer);
  }
  comm_->wait_sends();
}

TEST_F(NcclCommunicatorTest, BarrierCompletes) {
  comm_->barrier();
  comm_->barrier();
}

TEST_F(NcclCommunicatorTest, HostTensorsAreRejectedNamingTheOperation) {
  Tensor host_tensor = Tensor::zeros({4, 8}, DType::F32);
  try {
    comm_->all_reduce(host_tensor, ReduceOp::Sum);
    FAIL() << "expected CommError";
  } catch (const CommError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("rank " + std::to_string(rank_) + " (test group rank " +
                           std::to_string(rank_) + " of " + std::to_string(size_) +
                           "): all_reduce of F32[4, 8]"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("device tensors"), std::string::npos) << message;
  }
  EXPECT_THROW(comm_->broadcast(host_tensor, 0), CommError);
  EXPECT_THROW(comm_->send(host_tensor, 0), CommError);
  EXPECT_THROW(comm_->recv(host_tensor, 0), CommError);
  Tensor device_tensor = make({4, 8}, DType::F32, [](int64_t) { return 0; });
  EXPECT_THROW(comm_->send_recv(host_tensor, 0, device_tensor, 0), CommError);
}

TEST_F(NcclCommunicatorTest, MisshapenOutputsAreInternalErrors) {
  const Tensor in = make({2, 3}, DType::F32, [](int64_t i) { return i; });
  Tensor wrong = make({2 * size_ + 1, 3}, DType::F32, [](int64_t) { return 0; });
  EXPECT_THROW(comm_->all_gather(in, wrong), InternalError);
  Tensor wrong_dtype = make({2 * size_, 3}, DType::F16, [](int64_t) { return 0; });
  EXPECT_THROW(comm_->all_gather(in, wrong_dtype), InternalError);
  EXPECT_THROW(comm_->reduce_scatter(in, wrong), InternalError);
  // The communicator is still healthy.
  comm_->barrier();
}

TEST_F(NcclCommunicatorTest, SecondCommunicatorWorksAndIsDestroyedCleanly) {
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  {
    std::unique_ptr<Communicator> second = make_nccl_communicator(dup, "second", device_, kTimeout);
    EXPECT_EQ(second->name(), "second");
    Tensor t = make({64}, DType::F32, [&](int64_t) { return rank_ + 1; });
    second->all_reduce(t, ReduceOp::Sum);
    for (double v : host(t)) ASSERT_EQ(v, size_ * (size_ + 1) / 2.0);
    comm_->barrier();  // the shared communicator is unaffected
  }  // finalize + destroy on every rank
  MPI_Comm_free(&dup);
}

TEST_F(NcclCommunicatorTest, APeerThatNeverAnswersTimesOutAndAborts) {
  if (size_ < 2) GTEST_SKIP() << "needs two ranks (mpiexec -n 2 on two GPUs)";
  MPI_Comm dup;
  MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  {
    const std::chrono::seconds timeout(3);
    std::unique_ptr<Communicator> lonely = make_nccl_communicator(dup, "lonely", device_, timeout);
    if (rank_ == 0) {  // the others never join this all_reduce
      Tensor t = make({8}, DType::F32, [](int64_t) { return 1; });
      const auto start = std::chrono::steady_clock::now();
      try {
        lonely->all_reduce(t, ReduceOp::Sum);
        ADD_FAILURE() << "expected CommError";
      } catch (const CommError& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find("rank 0 (lonely group rank 0 of " + std::to_string(size_) +
                               "): all_reduce of F32[8]"),
                  std::string::npos)
            << message;
        EXPECT_NE(message.find("within 3 s"), std::string::npos) << message;
        EXPECT_NE(message.find("aborted"), std::string::npos) << message;
      }
      EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
      // Later calls fail at once: the communicator is gone.
      EXPECT_THROW(lonely->all_reduce(t, ReduceOp::Sum), CommError);
    }
  }  // rank 0's is aborted; the others' finalize finds rank 0 gone (bounded by the 3 s timeout)
  MPI_Comm_free(&dup);
  MPI_Barrier(MPI_COMM_WORLD);
  comm_->barrier();  // the shared communicator is unaffected
}

}  // namespace
}  // namespace glmrt
