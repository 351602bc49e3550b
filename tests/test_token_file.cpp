// Token files (PREFIX.bin / PREFIX.idx, Megatron's MMapIndexedDataset format): round trip, the
// format checked by a numpy re-implementation of Megatron's reader, Megatron-style uint16 files
// read here, atomic writes, corrupt and truncated files refused.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/token_file.h"
#include "kernels/error.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

namespace fs = std::filesystem;

class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::temp_dir(std::string("tokfile_") +
                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write_docs(const std::vector<std::vector<int32_t>>& docs, const std::string& name = "t") {
    const std::string prefix = dir_ + "/" + name;
    TokenFileWriter w(prefix);
    for (const auto& d : docs) w.add_document(d);
    w.finish();
    return prefix;
  }
  static std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  static void spit(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  }
  // Applies `edit` to a copy of a valid pair and expects TokenFile to refuse it.
  template <class Edit>
  void expect_refused(Edit edit, const std::string& needle) {
    const std::string prefix = write_docs({{1, 2, 3, 9}, {4, 5, 9}, {6, 9}}, "c");
    std::string idx = slurp(prefix + ".idx"), bin = slurp(prefix + ".bin");
    edit(idx, bin);
    spit(prefix + ".idx", idx);
    spit(prefix + ".bin", bin);
    try {
      TokenFile f(prefix);
      ADD_FAILURE() << "accepted a corrupt file; expected: " << needle;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(prefix), std::string::npos) << "names the file: " << e.what();
    }
  }
  template <class T>
  static void poke(std::string& s, size_t offset, T value) {
    std::memcpy(s.data() + offset, &value, sizeof(T));
  }

  std::string dir_;
};

const std::vector<std::vector<int32_t>> kDocs = {
    {5, 6, 7, 507}, {507}, {100000, 2, 70000, 3, 507}, {1, 1, 1, 1, 1, 1, 507}};

TEST_F(TokenFileTest, RoundTrip) {
  const std::string prefix = write_docs(kDocs);
  EXPECT_FALSE(fs::exists(prefix + ".bin.tmp"));
  EXPECT_FALSE(fs::exists(prefix + ".idx.tmp"));
  TokenFile f(prefix);
  ASSERT_EQ(f.num_documents(), 4);
  EXPECT_EQ(f.num_tokens(), 17);
  EXPECT_EQ(f.dtype_size(), 4);
  std::vector<int32_t> stream;
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(f.document(i), kDocs[i]);
    EXPECT_EQ(f.document_offset(i), static_cast<int64_t>(stream.size()));
    EXPECT_EQ(f.document_length(i), static_cast<int64_t>(kDocs[i].size()));
    stream.insert(stream.end(), kDocs[i].begin(), kDocs[i].end());
  }
  // read() windows over the concatenation, across document boundaries.
  for (int64_t off = 0; off < 17; ++off)
    for (int64_t n = 0; off + n <= 17; n += 3) {
      std::vector<int32_t> got(n, -1);
      f.read(off, n, got.data());
      EXPECT_EQ(got, std::vector<int32_t>(stream.begin() + off, stream.begin() + off + n));
    }
  EXPECT_EQ(std::vector<int32_t>(f.int32_tokens().begin(), f.int32_tokens().end()), stream);
  int32_t x;
  EXPECT_THROW(f.read(15, 3, &x), InputError);
  EXPECT_THROW(f.read(-1, 1, &x), InputError);
  EXPECT_THROW(f.document(4), InputError);
  // Copies share the mapping and outlive the original.
  TokenFile copy = f;
  f = TokenFile(write_docs({{1}}, "other"));
  EXPECT_EQ(copy.document(2), kDocs[2]);
}

TEST_F(TokenFileTest, EmptyFileIsValid) {
  const std::string prefix = write_docs({});
  TokenFile f(prefix);
  EXPECT_EQ(f.num_documents(), 0);
  EXPECT_EQ(f.num_tokens(), 0);
  f.read(0, 0, nullptr);
}

TEST_F(TokenFileTest, ExactBytes) {
  const std::string prefix = write_docs({{7, 8}, {9}});
  std::string idx = slurp(prefix + ".idx");
  ASSERT_EQ(idx.size(), 34u + 2 * 4 + 2 * 8 + 3 * 8);
  EXPECT_EQ(idx.substr(0, 9), std::string("MMIDIDX\0\0", 9));
  EXPECT_EQ(idx[17], 4);  // int32
  EXPECT_EQ(slurp(prefix + ".bin").size(), 12u);
}

// A numpy re-implementation of Megatron-LM's MMapIndexedDataset reader (megatron/data/
// indexed_dataset.py) reads what glmrt wrote, and glmrt reads a uint16 file written the way
// Megatron's builder writes one.
TEST_F(TokenFileTest, MegatronReaderInNumpy) {
  const std::string prefix = write_docs(kDocs);
  const std::string script = dir_ + "/megatron_reader.py";
  std::ofstream(script) << R"PY(
import json, struct, sys
import numpy as np
dtypes = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}
def read(prefix):
    with open(prefix + ".idx", "rb") as s:
        assert s.read(9) == b"MMIDIDX\x00\x00"
        assert struct.unpack("<Q", s.read(8)) == (1,)
        (code,) = struct.unpack("<B", s.read(1))
        dtype = dtypes[code]
        (n,) = struct.unpack("<Q", s.read(8))
        (m,) = struct.unpack("<Q", s.read(8))
        offset = s.tell()
    buf = memoryview(np.memmap(prefix + ".idx", mode="r", order="C"))
    sizes = np.frombuffer(buf, dtype=np.int32, count=n, offset=offset)
    pointers = np.frombuffer(buf, dtype=np.int64, count=n, offset=offset + sizes.nbytes)
    doc_idx = np.frombuffer(buf, dtype=np.int64, count=m,
                            offset=offset + sizes.nbytes + pointers.nbytes)
    data = memoryview(np.memmap(prefix + ".bin", mode="r", order="C"))
    docs = [np.frombuffer(data, dtype=dtype, count=int(sizes[i]), offset=int(pointers[i])).tolist()
            for i in range(n)]
    return {"dtype": code, "docs": docs, "doc_idx": doc_idx.tolist()}
def write_uint16(prefix, docs):  # MMapIndexedDatasetBuilder with dtype=np.uint16
    with open(prefix + ".bin", "wb") as f:
        for d in docs:
            f.write(np.array(d, dtype=np.uint16).tobytes(order="C"))
    sizes = [len(d) for d in docs]
    pointers, address = [], 0
    for size in sizes:
        pointers.append(address)
        address += size * 2
    doc_idx = list(range(len(docs) + 1))
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", 8))
        f.write(struct.pack("<Q", len(sizes)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(np.array(sizes, dtype=np.int32).tobytes(order="C"))
        f.write(np.array(pointers, dtype=np.int64).tobytes(order="C"))
        f.write(np.array(doc_idx, dtype=np.int64).tobytes(order="C"))
print(json.dumps(read(sys.argv[1])))
write_uint16(sys.argv[2], [[1, 2, 65535], [40000], [3, 4]])
)PY";
  auto r = testing::run_command("python3 " + script + " " + prefix + " " + dir_ + "/u16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["dtype"], 4);
  EXPECT_EQ(j["docs"].get<std::vector<std::vector<int32_t>>>(), kDocs);
  EXPECT_EQ(j["doc_idx"].get<std::vector<int64_t>>(), (std::vector<int64_t>{0, 1, 2, 3, 4}));

  TokenFile u16(dir_ + "/u16");
  EXPECT_EQ(u16.dtype_size(), 2);
  EXPECT_EQ(u16.num_documents(), 3);
  EXPECT_EQ(u16.num_tokens(), 6);
  EXPECT_EQ(u16.document(0), (std::vector<int32_t>{1, 2, 65535}));
  EXPECT_EQ(u16.document(1), (std::vector<int32_t>{40000}));
  EXPECT_EQ(u16.document_offset(2), 4);
  std::vector<int32_t> w(3);
  u16.read(2, 3, w.data());
  EXPECT_EQ(w, (std::vector<int32_t>{65535, 40000, 3}));
  EXPECT_TRUE(u16.int32_tokens().empty());
}

TEST_F(TokenFileTest, AbandonedWriterLeavesNothing) {
  const std::string prefix = dir_ + "/t";
  {
    TokenFileWriter w(prefix);
    w.add_document(kDocs[0]);
    EXPECT_TRUE(fs::exists(prefix + ".bin.tmp"));
  }
  EXPECT_TRUE(fs::is_empty(dir_));
  // An existing pair is left as it was by an abandoned rewrite, and replaced by a finished one.
  write_docs({{1, 2}});
  {
    TokenFileWriter w(prefix);
    w.add_document(kDocs[2]);
  }
  EXPECT_EQ(TokenFile(prefix).document(0), (std::vector<int32_t>{1, 2}));
  write_docs({{3}});
  EXPECT_EQ(TokenFile(prefix).document(0), (std::vector<int32_t>{3}));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"t.bin", "t.idx"}));
}

TEST_F(TokenFileTest, WriterRefusesBadInput) {
  EXPECT_THROW(TokenFileWriter(dir_ + "/no/such/dir/t"), InputError);
  TokenFileWriter w(dir_ + "/t");
  EXPECT_THROW(w.add_document(std::vector<int32_t>{1, -2}), InputError);
}

TEST_F(TokenFileTest, RefusesCorruptFiles) {
  expect_refused([](std::string& idx, std::string&) { idx[0] = 'X'; }, "bad magic");
  expect_refused([](std::string& idx, std::string&) { poke<uint64_t>(idx, 9, 2); }, "version 2");
  expect_refused([](std::string& idx, std::string&) { poke<uint8_t>(idx, 17, 6); }, "dtype code 6");
  expect_refused([](std::string& idx, std::string&) { idx.resize(20); }, "truncated");
  expect_refused([](std::string& idx, std::string&) { idx.pop_back(); }, "does not match its header");
  expect_refused([](std::string& idx, std::string&) { idx += "x"; }, "does not match its header");
  expect_refused([](std::string& idx, std::string&) { poke<uint64_t>(idx, 18, uint64_t(1) << 62); },
                 "does not match its header");
  expect_refused([](std::string&, std::string& bin) { bin.resize(bin.size() - 4); }, "truncated or mismatched");
  expect_refused([](std::string&, std::string& bin) { bin += "abcd"; }, "truncated or mismatched");
  // sizes at 34, pointers at 34 + 3·4 = 46, doc_idx at 46 + 3·8 = 70.
  expect_refused([](std::string& idx, std::string&) { poke<int32_t>(idx, 34, -1); }, "negative size");
  expect_refused([](std::string& idx, std::string&) { poke<int64_t>(idx, 54, 20); }, "contiguous");
  expect_refused([](std::string& idx, std::string&) { poke<int64_t>(idx, 78, 3); }, "out of order");
  expect_refused([](std::string& idx, std::string&) { poke<int64_t>(idx, 94, 2); }, "ends at 2");
  expect_refused([](std::string& idx, std::string&) { poke<int64_t>(idx, 70, 1); }, "out of order");
}

TEST_F(TokenFileTest, RefusesMissingFiles) {
  const std::string prefix = write_docs({{1}});
  fs::remove(prefix + ".bin");
  try {
    TokenFile f(prefix);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(prefix + ".bin: cannot open"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TokenFile(dir_ + "/nothing"), InputError);
}

}  // namespace
}  // namespace glmrt
