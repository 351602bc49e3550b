// main() of the MPI test binary: every rank runs the same tests; only rank 0 prints, and the
// process exits non-zero on every rank when any rank failed, so CTest sees a failure anywhere.
#include <gtest/gtest.h>
#include <mpi.h>

#include "tests/mpi/mpi_test_env.h"

namespace glmrt::testing {
Layout g_layout{1, 1, 1};
}

int main(int argc, char** argv) {
  int provided = 0, rank = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);  // ServeReplicas' router thread
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  ::testing::InitGoogleTest(&argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--layout=", 0) == 0) {
      std::sscanf(a.c_str() + 9, "%d,%d,%d", &glmrt::testing::g_layout.tensor,
                  &glmrt::testing::g_layout.pipeline, &glmrt::testing::g_layout.data);
    }
  }
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && any && !failed) std::printf("a test failed on another rank\n");
  MPI_Finalize();
  return any;
}
