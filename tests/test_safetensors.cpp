// safetensors: round trips of every dtype, the reference reader (PyPI `safetensors`) loads our
// files, and corrupt files are refused with the file and the problem named.
#include <filesystem>
#include <fstream>

#include "checkpoint/safetensors.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

NamedTensors all_dtypes() {
  NamedTensors t;
  t.emplace_back("f32", Tensor::from_floats({1.5f, -2.25f, 3e-8f, 65504.f, -0.f, 7.f}, {2, 3}));
  t.emplace_back("f64", testing::random_tensor({4}, 1, DType::F64));
  t.emplace_back("f16", Tensor::from_floats({0.5f, -1.f, 1000.f}, {3}, DType::F16));
  t.emplace_back("bf16", Tensor::from_floats({0.5f, -1.f, 3.f, 1e30f}, {2, 2}, DType::BF16));
  Tensor i8 = Tensor::empty({5}, DType::I8);
  for (int i = 0; i < 5; ++i) i8.data_as<int8_t>()[i] = static_cast<int8_t>(i * 50 - 128);
  t.emplace_back("i8", i8);
  t.emplace_back("i32", Tensor::from_ints({-7, 0, 2147483647}, {3}));
  Tensor i64 = Tensor::empty({2}, DType::I64);
  i64.data_as<int64_t>()[0] = -(1LL << 40);
  i64.data_as<int64_t>()[1] = 123;
  t.emplace_back("i64", i64);
  t.emplace_back("empty", Tensor::empty({0, 4}, DType::F32));
  t.emplace_back("scalar", Tensor::from_floats({42.f}, {}));
  return t;
}

TEST(Safetensors, RoundTripsEveryDtypeBitForBit) {
  const std::string dir = testing::temp_dir("st_roundtrip"), path = dir + "/a.safetensors";
  const NamedTensors tensors = all_dtypes();
  write_safetensors(path, tensors, {{"format", "pt"}});
  SafetensorsReader r(path);
  EXPECT_EQ(r.metadata().at("format"), "pt");
  ASSERT_EQ(r.entries().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    Tensor back = r.tensor(name);
    EXPECT_EQ(back.dtype(), t.dtype()) << name;
    EXPECT_EQ(back.shape(), t.shape()) << name;
    ASSERT_EQ(back.nbytes(), t.nbytes());
    if (t.nbytes()) {
      EXPECT_EQ(0, std::memcmp(back.data(), t.data(), t.nbytes())) << name;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(back.data()) % dtype_size(t.dtype()), 0u) << name;
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, ReferenceReaderLoadsOurFiles) {
  const std::string dir = testing::temp_dir("st_reference"), path = dir + "/a.safetensors";
  write_safetensors(path, all_dtypes());
  // numpy has no bfloat16: the reference reader's PyTorch-free API reads the rest; check bf16 bits
  // by reading the raw bytes of the file through the header the library parsed.
  const std::string script = dir + "/check.py";
  std::ofstream(script) << R"(import sys, numpy as np
from safetensors import safe_open
with safe_open(sys.argv[1], framework="numpy") as f:
    keys = sorted(f.keys())
    assert keys == sorted(["f32","f64","f16","bf16","i8","i32","i64","empty","scalar"]), keys
    t = {k: f.get_tensor(k) for k in keys if k != "bf16"}
assert t["f32"].dtype == np.float32 and t["f32"].shape == (2, 3)
assert (t["f32"] == np.array([[1.5, -2.25, 3e-8], [65504.0, -0.0, 7.0]], np.float32)).all()
assert t["f16"].dtype == np.float16 and t["f16"].tolist() == [0.5, -1.0, 1000.0]
assert t["i8"].tolist() == [-128, -78, -28, 22, 72]
assert t["i32"].tolist() == [-7, 0, 2147483647]
assert t["i64"].tolist() == [-(1 << 40), 123]
assert t["empty"].shape == (0, 4) and t["scalar"].shape == () and float(t["scalar"]) == 42.0
print("reference reader OK")
)";
  auto r = testing::run_command("python3 " + script + " " + path);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("reference reader OK"), std::string::npos) << r.output;
  std::filesystem::remove_all(dir);
}

class CorruptSafetensors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::temp_dir("st_corrupt");
    path_ = dir_ + "/x.safetensors";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write_raw(const std::string& header, size_t data_bytes) {
    std::ofstream f(path_, std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header << std::string(data_bytes, '\0');
  }
  void expect_refused(const std::string& needle) {
    try {
      SafetensorsReader r(path_);
      ADD_FAILURE() << "accepted a corrupt file; expected: " << needle;
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(path_), std::string::npos) << e.what();
    }
  }
  std::string dir_, path_;
};

TEST_F(CorruptSafetensors, Truncated) {
  write_raw(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8);
  expect_refused("truncated");
  std::ofstream(path_, std::ios::binary) << "abc";
  expect_refused("truncated");
}

TEST_F(CorruptSafetensors, HeaderLongerThanFile) {
  std::ofstream f(path_, std::ios::binary);
  const uint64_t n = 1000;
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << "{}";
  f.close();
  expect_refused("header length 1000");
}

TEST_F(CorruptSafetensors, MalformedHeader) {
  write_raw(R"({"a": {"dtype": "F32", )", 0);
  expect_refused("malformed JSON header");
}

TEST_F(CorruptSafetensors, UnknownDtype) {
  write_raw(R"({"a": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}})", 4);
  expect_refused("tensor a: unsupported dtype");
}

TEST_F(CorruptSafetensors, SizeDoesNotMatchShape) {
  write_raw(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}})", 12);
  expect_refused("tensor a: data_offsets [0, 12) hold 12 bytes");
}

TEST_F(CorruptSafetensors, OverlappingTensors) {
  write_raw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12);
  expect_refused("overlap");
}

// The streaming writer takes tensors in any order (a quantized shard's I8 values and F16 scales
// are written together, though the file holds the values last) and produces the same file as
// write_safetensors; a tensor written twice, one not in the header or one missing is refused,
// and an unfinished writer leaves nothing behind.
TEST(Safetensors, StreamWriterTakesAnyOrder) {
  const std::string dir = testing::temp_dir("st_stream");
  const NamedTensors tensors = all_dtypes();
  write_safetensors(dir + "/whole.safetensors", tensors, {{"format", "pt"}});
  std::vector<SafetensorsStreamWriter::Entry> entries;
  for (const auto& [name, t] : tensors) entries.push_back({name, t.dtype(), t.shape()});
  {
    SafetensorsStreamWriter w(dir + "/stream.safetensors", entries, {{"format", "pt"}});
    for (auto it = tensors.rbegin(); it != tensors.rend(); ++it) w.write(it->first, it->second);
    EXPECT_THROW(w.write("f32", tensors.front().second), InternalError);
    EXPECT_THROW(w.write("nope", tensors.front().second), InternalError);
    w.finish();
  }
  const auto bytes = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(bytes(dir + "/stream.safetensors"), bytes(dir + "/whole.safetensors"));
  {
    SafetensorsStreamWriter w(dir + "/partial.safetensors", entries);
    w.write("i8", tensors[4].second);
    EXPECT_THROW(w.finish(), InternalError);
  }
  EXPECT_FALSE(std::filesystem::exists(dir + "/partial.safetensors"));
  for (const auto& e : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  std::filesystem::remove_all(dir);
}

TEST(Safetensors, FailedWriteLeavesNothing) {
  const std::string dir = testing::temp_dir("st_fail");
  EXPECT_THROW(write_safetensors(dir + "/missing/sub/a.safetensors", all_dtypes()), CheckpointError);
  EXPECT_TRUE(std::filesystem::is_empty(dir));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace glmrt
