// Loading a checkpoint checks every file's size and checksum, and the job shares that reading
// out: on W ranks each file is hashed by one rank (files i ≡ r mod W by rank r), not by every
// rank (GLM-130B's 768 ranks would otherwise each read the whole multi-terabyte checkpoint).
// Measured with each rank's own read volume (/proc/self/io rchar) around find_checkpoint; then a
// damaged file is found by whichever rank hashes it, and every rank refuses the checkpoint with
// the same message and falls back to the older one.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "parallel/process_groups.h"
#include "tests/mpi/mpi_test_env.h"
#include "tests/test_util.h"
#include "train/checkpointing.h"

namespace glmrt {
namespace {

namespace fs = std::filesystem;

// Bytes this process has read through read() and friends so far.
int64_t read_bytes() {
  std::ifstream io("/proc/self/io");
  std::string key;
  int64_t value = 0;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return -1;
}

std::string broadcast_string(std::string s) {
  int n = static_cast<int>(s.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
  s.resize(static_cast<size_t>(n));
  MPI_Bcast(s.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
  return s;
}

TEST(CheckpointVerify, EveryFileIsHashedByOneRankAndEveryRankAgrees) {
  int rank = 0, world = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  GlmConfig c = testing::small_glm_config(4);
  c.hidden_size = 64;  // files of some size, so that the reading is measurable
  c.ffn_hidden_size = 96;
  // Rank 0 writes two checkpoints (iterations 1 and 2) for tensor 2 × pipeline 2: 4 model and 4
  // optimizer files each.
  std::string dir;
  if (rank == 0) {
    dir = testing::temp_dir("checkpoint_verify");
    CheckpointManifest m;
    m.precision = "fp32";
    m.model = c;
    for (int64_t iteration : {1, 2}) {
      m.iteration = m.state.iteration = iteration;
      write_checkpoint(dir, m, 2, 2, {2, 2}, DType::F32, [&](const ParamSpec& spec, const std::string& name) {
        Tensor t = Tensor::empty(spec.shape, DType::F32);
        float* p = t.data_as<float>();
        for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>((i * 7 + name.size()) % 13) * 0.01f;
        return t;
      });
    }
  }
  dir = broadcast_string(dir);
  MPI_Barrier(MPI_COMM_WORLD);

  const int64_t before = read_bytes();
  ASSERT_GE(before, 0) << "no /proc/self/io";
  std::string note;
  const CheckpointManifest m = find_checkpoint(dir, c, &note, MPI_COMM_WORLD);
  const int64_t read = read_bytes() - before;
  EXPECT_EQ(m.iteration, 2);
  EXPECT_TRUE(note.empty()) << note;
  // This rank's share: the files (in the manifest's order) i ≡ rank mod world.
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(m.path))
    if (e.path().extension() == ".safetensors") files.push_back(e.path().filename().string());
  std::sort(files.begin(), files.end());
  ASSERT_EQ(files.size(), 8u);
  int64_t mine = 0, all = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    const auto bytes = static_cast<int64_t>(fs::file_size(m.path + "/" + files[i]));
    all += bytes;
    if (static_cast<int>(i % static_cast<size_t>(world)) == rank) mine += bytes;
  }
  // Its own files, plus the manifest and `latest` (a few KiB).
  EXPECT_GE(read, mine) << "rank " << rank;
  EXPECT_LE(read, mine + (64 << 10)) << "rank " << rank << " read " << read << " bytes of a " << all
                                     << "-byte checkpoint, its share is " << mine;

  // A flipped byte in the last file: found by the rank that hashes it, refused by every rank.
  MPI_Barrier(MPI_COMM_WORLD);
  const std::string last = m.path + "/" + files.back();
  if (rank == 0) {
    std::fstream f(last, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    const char byte = static_cast<char>(f.get());
    f.seekp(-3, std::ios::end);
    f.put(static_cast<char>(~byte));
  }
  MPI_Barrier(MPI_COMM_WORLD);
  note.clear();
  const CheckpointManifest older = find_checkpoint(dir, c, &note, MPI_COMM_WORLD);
  EXPECT_EQ(older.iteration, 1);
  EXPECT_NE(note.find(last + ": checksum mismatch (corrupted)"), std::string::npos) << note;
  EXPECT_NE(note.find("iter_0000001 instead"), std::string::npos) << note;
  // The same note on every rank.
  EXPECT_EQ(broadcast_string(note), note);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove_all(dir);
}

}  // namespace
}  // namespace glmrt
