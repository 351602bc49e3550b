// glmrt import-sat and its torch.save reader, on the fixture of tests/reference/make_sat_checkpoint.py
// (tests/golden/sat: the tiny model's fp16 weights in the released SAT layout, TP = 2).
//   - TorchCheckpoint reads names, dtypes, shapes, strides and offsets as torch wrote them, and the
//     merged pieces are bit for bit the fp16 weights of tests/golden/tiny_weights.safetensors
//     (including a non-contiguous view and views with a storage offset); a ZIP64 copy reads the same.
//   - Damaged files are refused naming the file and the problem (truncated, compressed entry, not a
//     zip, the legacy format, an unknown pickle opcode with its offset, no data.pkl).
//   - The CLI imports into (1,1) and (2,2) checkpoints whose forward matches the PyTorch reference
//     of the fp16 weights (≤ 1e-5), with a fresh optimizer state (fp32 master = weights, zero
//     moments); a wrong model, an impossible split, a truncated file or a missing `latest` is
//     refused before anything is written.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/safetensors.h"
#include "checkpoint/torch_checkpoint.h"
#include "launcher/run_config.h"
#include "model/parameters.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::source_path;
namespace fs = std::filesystem;

const std::string kSat = "tests/golden/sat";
std::string rank_file(int r) { return source_path(kSat + "/7/mp_rank_0" + std::to_string(r) + "_model_states.pt"); }

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.nbytes()) == 0;
}

GlmConfig tiny_model() { return load_run_config(source_path("tests/golden/tiny_exactrope.yaml")).model; }

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Expects TorchCheckpoint(path) to throw a CheckpointError naming the file and containing `what`.
void expect_refused(const std::string& path, const std::string& what) {
  try {
    TorchCheckpoint ck(path);
    ADD_FAILURE() << path << ": accepted (expected: " << what << ")";
  } catch (const CheckpointError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
  }
}

TEST(TorchCheckpoint, ReadsTheReleasedLayoutPiecesBitForBit) {
  const TorchCheckpoint r0(rank_file(0)), r1(rank_file(1));
  EXPECT_EQ(r0.format_version(), "3");
  const GlmConfig model = tiny_model();
  const std::vector<ParamSpec> specs = glm_param_specs(model);
  // rank 1 holds exactly the parameters, in the model's order; rank 0 also the inv_freq buffers
  std::vector<std::string> want;
  for (const ParamSpec& s : specs) want.push_back(s.name);
  EXPECT_EQ(r1.names(), want);
  std::vector<std::string> want0;
  for (const std::string& n : want) {
    want0.push_back(n);
    if (n.ends_with("attention.dense.bias"))
      want0.push_back(n.substr(0, n.size() - std::strlen("dense.bias")) + "rotary_emb.inv_freq");
  }
  EXPECT_EQ(r0.names(), want0);

  const SafetensorsReader source(source_path("tests/golden/tiny_weights.safetensors"));
  const std::vector<ParamSpec> local = glm_param_specs(model, ModelShard{0, 2, 0, -1, true, true});
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParamSpec& s = specs[i];
    const Tensor a = r0.tensor(s.name), b = r1.tensor(s.name);
    EXPECT_EQ(a.dtype(), DType::F16) << s.name;
    EXPECT_EQ(a.shape(), local[i].local_shape) << s.name;
    EXPECT_EQ(b.shape(), local[i].local_shape) << s.name;
    const Tensor merged = unshard_tensor({a, b}, s.rule);
    EXPECT_TRUE(same_bits(merged, source.tensor(s.name).to(DType::F16))) << s.name;
    // and each piece is the shard glmrt's own rule makes
    EXPECT_TRUE(same_bits(b, shard_tensor(merged, s.rule, 1, 2))) << s.name;
  }
  // the shapes of the release's split
  EXPECT_EQ(r0.info("transformer.word_embeddings.weight").shape, (Shape{128, 64}));
  EXPECT_EQ(r0.info("transformer.layers.1.attention.dense.weight").shape, (Shape{64, 32}));
  EXPECT_EQ(r0.info("transformer.layers.1.mlp.dense_h_to_4h.weight").shape, (Shape{128, 64}));
  EXPECT_EQ(r0.info("transformer.layers.1.mlp.dense_4h_to_h.weight").shape, (Shape{64, 64}));
  EXPECT_EQ(r0.info("transformer.final_layernorm.bias").shape, (Shape{64}));
  // what torch wrote for views: a column view keeps the full row stride, a row view an offset
  const TorchTensorInfo& col = r1.info("transformer.layers.0.attention.dense.weight");
  EXPECT_FALSE(col.contiguous());
  EXPECT_EQ(col.stride, (std::vector<int64_t>{64, 1}));
  EXPECT_EQ(col.storage_offset, 32);
  EXPECT_EQ(col.storage_numel, 64 * 64);
  const TorchTensorInfo& qkv = r1.info("transformer.layers.0.attention.query_key_value.weight");
  EXPECT_TRUE(qkv.contiguous());
  EXPECT_EQ(qkv.storage_offset, 96 * 64);
  EXPECT_EQ(qkv.storage_type, "HalfStorage");
  // a few values against the source, by hand
  const Tensor src_emb = source.tensor("transformer.word_embeddings.weight");
  const Tensor emb1 = r1.tensor("transformer.word_embeddings.weight");
  for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{64 * 5 + 7}, int64_t{128 * 64 - 1}})
    EXPECT_EQ(emb1.item(k), Tensor::from_floats({float(src_emb.item(128 * 64 + k))}, {}, DType::F16).item(0));
  const Tensor dense = r1.tensor("transformer.layers.0.attention.dense.weight");  // materialised
  const Tensor src_dense = source.tensor("transformer.layers.0.attention.dense.weight");
  EXPECT_EQ(dense.item(3 * 32 + 5), Tensor::from_floats({float(src_dense.item(3 * 64 + 32 + 5))}, {}, DType::F16).item(0));
  // the ignored buffer: inv_freq[i] = 10000^(-2i/16) in fp16
  const Tensor inv = r0.tensor("transformer.layers.1.attention.rotary_emb.inv_freq");
  ASSERT_EQ(inv.shape(), (Shape{8}));
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(inv.item(i), std::pow(10000.0, -2.0 * i / 16), 1e-3 * inv.item(i));
  // release() drops pages, not data
  const Tensor before = r0.tensor("transformer.word_embeddings.weight").clone();
  r0.release("transformer.word_embeddings.weight");
  EXPECT_TRUE(same_bits(r0.tensor("transformer.word_embeddings.weight"), before));
  try {
    r0.tensor("transformer.layers.2.attention.dense.weight");
    ADD_FAILURE() << "returned a tensor that is not there";
  } catch (const CheckpointError& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor transformer.layers.2.attention.dense.weight"), std::string::npos);
  }
}

TEST(TorchCheckpoint, ReadsZip64Archives) {
  const TorchCheckpoint plain(rank_file(0)), z64(source_path(kSat + "/zip64_mp_rank_00.pt"));
  ASSERT_EQ(z64.names(), plain.names());
  for (const std::string& n : plain.names()) EXPECT_TRUE(same_bits(z64.tensor(n), plain.tensor(n))) << n;
}

// Every dtype and view torch writes, in pickle protocols 2 and 4 (top-level dict, no "module").
TEST(TorchCheckpoint, ReadsEveryDtypeAndStridedViews) {
  for (const char* proto : {"p2", "p4"}) {
    SCOPED_TRACE(proto);
    const TorchCheckpoint ck(source_path(kSat + "/odd_tensors_" + proto + ".pt"));
    EXPECT_EQ(ck.names(), (std::vector<std::string>{"transposed", "strided", "expanded", "scalar", "empty", "bf16",
                                                    "f16", "i64", "i32", "i8", "u8", "param"}));
    auto values = [](const Tensor& t) {
      std::vector<double> v;
      for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t.item(i));
      return v;
    };
    const Tensor tr = ck.tensor("transposed");  // arange(12).reshape(3, 4).t()
    EXPECT_EQ(tr.shape(), (Shape{4, 3}));
    EXPECT_EQ(values(tr), (std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
    const Tensor st = ck.tensor("strided");  // arange(60).reshape(3, 4, 5)[:, 1:3, ::2]
    EXPECT_EQ(st.shape(), (Shape{3, 2, 3}));
    std::vector<double> want;
    for (int a = 0; a < 3; ++a)
      for (int b = 1; b < 3; ++b)
        for (int c = 0; c < 5; c += 2) want.push_back(a * 20 + b * 5 + c);
    EXPECT_EQ(values(st), want);
    EXPECT_EQ(ck.info("strided").storage_offset, 5);
    const Tensor ex = ck.tensor("expanded");
    EXPECT_EQ(ex.dtype(), DType::F64);
    EXPECT_EQ(values(ex), (std::vector<double>{1, 2, 3, 1, 2, 3}));
    const Tensor sc = ck.tensor("scalar");
    EXPECT_EQ(sc.shape(), Shape{});
    EXPECT_EQ(sc.item(0), 3.5);
    const Tensor em = ck.tensor("empty");
    EXPECT_EQ(em.shape(), (Shape{0, 4}));
    EXPECT_EQ(em.dtype(), DType::F16);
    EXPECT_EQ(ck.tensor("bf16").dtype(), DType::BF16);
    EXPECT_EQ(values(ck.tensor("bf16")), values(Tensor::from_floats({1.5f, -2.f, 3.0e30f}, {3}, DType::BF16)));
    EXPECT_EQ(values(ck.tensor("f16")), (std::vector<double>{0.5, -1, 1000}));
    EXPECT_EQ(ck.tensor("i64").dtype(), DType::I64);
    EXPECT_EQ(values(ck.tensor("i64")), (std::vector<double>{-1099511627776.0, 123}));
    EXPECT_EQ(values(ck.tensor("i32")), (std::vector<double>{-7, 0, 2147483647}));
    EXPECT_EQ(ck.tensor("i8").dtype(), DType::I8);
    EXPECT_EQ(values(ck.tensor("i8")), (std::vector<double>{-128, 0, 127}));
    EXPECT_EQ(ck.tensor("param").dtype(), DType::F32);
    EXPECT_EQ(values(ck.tensor("param")), (std::vector<double>{1, 2, 3, 4}));
    try {
      ck.tensor("u8");
      ADD_FAILURE() << "returned a uint8 tensor";
    } catch (const CheckpointError& e) {
      EXPECT_NE(std::string(e.what()).find("tensor u8 is a torch.ByteStorage tensor, which glmrt has no dtype for"),
                std::string::npos) << e.what();
    }
  }
}

TEST(TorchCheckpoint, RefusesDamagedFilesNamingTheProblem) {
  const std::string dir = testing::temp_dir("torch_refusals");
  const std::string good = read_bytes(rank_file(0));
  ASSERT_GT(good.size(), 1000u);

  const std::string truncated = dir + "/truncated.pt";
  write_bytes(truncated, good.substr(0, good.size() / 2));
  expect_refused(truncated, "truncated");

  // every central-directory entry marked deflate-compressed (method 8)
  std::string deflated = good;
  for (size_t at = 0; (at = deflated.find("PK\x01\x02", at)) != std::string::npos; at += 4) deflated[at + 10] = 8;
  write_bytes(dir + "/compressed.pt", deflated);
  expect_refused(dir + "/compressed.pt", "compressed zip entry (method 8");

  write_bytes(dir + "/not_zip.pt", read_bytes(source_path("tests/golden/tiny_weights.safetensors")));
  expect_refused(dir + "/not_zip.pt", "not a zip archive");
  write_bytes(dir + "/legacy.pt", std::string("\x80\x02\x8a\x0a") + std::string(100, '\0'));
  expect_refused(dir + "/legacy.pt", "legacy torch.save format");
  write_bytes(dir + "/empty.pt", "");
  expect_refused(dir + "/empty.pt", "empty file");

  // an opcode the unpickler does not know, right after PROTO 2 (offset 2 of data.pkl, the first entry)
  std::string bad_op = good;
  const size_t pkl = 30 + static_cast<uint8_t>(good[26]) + 256u * static_cast<uint8_t>(good[27]) +
                     static_cast<uint8_t>(good[28]) + 256u * static_cast<uint8_t>(good[29]);
  ASSERT_EQ(static_cast<uint8_t>(bad_op[pkl]), 0x80);  // PROTO
  bad_op[pkl + 2] = static_cast<char>(0xff);
  write_bytes(dir + "/bad_opcode.pt", bad_op);
  expect_refused(dir + "/bad_opcode.pt", "unsupported pickle opcode 0xff at offset 2");

  // no data.pkl (renamed in the local and central headers)
  std::string no_pkl = good;
  const std::string name = "mp_rank_00_model_states/data.pkl";
  for (size_t at = 0; (at = no_pkl.find(name, at)) != std::string::npos; at += name.size()) no_pkl[at + name.size() - 1] = 'x';
  write_bytes(dir + "/no_pkl.pt", no_pkl);
  expect_refused(dir + "/no_pkl.pt", "no data.pkl");

  expect_refused(dir + "/absent.pt", "cannot open");
  fs::remove_all(dir);
}

class ImportSat : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::temp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name()); }
  void TearDown() override { fs::remove_all(dir_); }
  testing::CommandResult import(const std::string& from, const std::string& to, const std::string& extra) {
    return testing::run_glmrt("import-sat --config " + source_path("tests/golden/tiny_exactrope.yaml") +
                              " --from " + from + " --to " + to + " " + extra);
  }
  std::string dir_;
};

TEST_F(ImportSat, ImportedCheckpointsReproduceTheReferenceLogitsOnAnyLayout) {
  const Tensor expected = SafetensorsReader(source_path(kSat + "/expected_logits.safetensors")).tensor("logits");
  const SafetensorsReader source(source_path("tests/golden/tiny_weights.safetensors"));
  for (auto [t, p] : {std::pair{1, 1}, std::pair{2, 2}}) {
    const std::string layout = std::to_string(t) + std::to_string(p), ck = dir_ + "/ck" + layout;
    auto r = import(source_path(kSat), ck, "--tensor " + std::to_string(t) + " --pipeline " + std::to_string(p));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("glmrt import-sat: " + source_path(kSat) + "/7 (2 tensor-parallel ranks, 27 tensors"),
              std::string::npos) << r.output;
    EXPECT_NE(r.output.find("(tensor " + std::to_string(t) + ", pipeline " + std::to_string(p) + ", F16 weights"),
              std::string::npos) << r.output;

    const std::string out = dir_ + "/logits" + layout + ".safetensors";
    r = testing::run_glmrt("forward --config " + source_path("tests/golden/tiny_exactrope.yaml") + " --load " + ck +
                           " --input " + source_path("tests/golden/forward_plain.json") + " --output " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const Tensor logits = SafetensorsReader(out).tensor("logits");
    ASSERT_EQ(logits.shape(), expected.shape());
    EXPECT_LE(testing::max_rel_diff(logits, expected), 1e-5) << "layout (" << t << "," << p << ")";

    // the manifest: iteration 0, fp16, the layout; the files: F16 weights, fp32 master = the
    // weights, zero moments
    std::ifstream in(ck + "/iter_0000000/manifest.json");
    const nlohmann::json m = nlohmann::json::parse(in);
    EXPECT_EQ(m["iteration"], 0);
    EXPECT_EQ(m["updates"], 0);
    EXPECT_EQ(m["precision"], "fp16");
    EXPECT_EQ(m["layout"]["tensor"], t);
    EXPECT_EQ(m["layout"]["pipeline"], p);
    const SafetensorsReader model(ck + "/iter_0000000/model_tp0_pp0.safetensors");
    const SafetensorsReader optim(ck + "/iter_0000000/optim_tp0_pp0.safetensors");
    const std::string qkv = "transformer.layers.0.attention.query_key_value.weight";
    const Tensor w = model.tensor(qkv);
    EXPECT_EQ(w.dtype(), DType::F16);
    EXPECT_TRUE(same_bits(w, shard_tensor(source.tensor(qkv).to(DType::F16), ShardRule::Rows, 0, t)));
    EXPECT_TRUE(same_bits(optim.tensor(qkv + ".master"), w.to(DType::F32)));
    for (const char* moment : {".exp_avg", ".exp_avg_sq"}) {
      const Tensor z = optim.tensor(qkv + moment);
      EXPECT_EQ(z.dtype(), DType::F32);
      EXPECT_TRUE(same_bits(z, Tensor::zeros(z.shape(), DType::F32))) << moment;
    }
  }
}

// The released checkpoint straight to a pre-quantized one, and glmrt quantize --from a glmrt
// checkpoint of another layout: every tensor is the reference's quantization of the new layout's
// shards of the fp16 weights (the (1, 1) import, a full weight file with the released names); a
// bad bit width is refused before writing.
TEST_F(ImportSat, QuantizedImportIsTheReleasedQuantizationOfTheNewShards) {
  auto r = import(source_path(kSat), dir_ + "/full", "--tensor 1 --pipeline 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string fp16 = dir_ + "/full/iter_0000000/model_tp0_pp0.safetensors";
  for (const int bits : {4, 8}) {
    const std::string ck = dir_ + "/q" + std::to_string(bits);
    r = import(source_path(kSat), ck, "--tensor 2 --pipeline 2 --quantization-bit-width " + std::to_string(bits));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("(tensor 2, pipeline 2, " + std::to_string(bits) + "-bit linear weights, the rest F16, "
                            "weights only)"), std::string::npos) << r.output;
    r = testing::run_command("/usr/bin/python3 " + source_path("tests/reference/glm_quantize_reference.py") +
                             " --check-checkpoint " + ck + " --weights " + fp16);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("tensors match the released " + std::to_string(bits) + "-bit quantization"),
              std::string::npos) << r.output;
  }
  r = import(source_path(kSat), dir_ + "/ck21", "--tensor 2 --pipeline 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = testing::run_glmrt("quantize --config " + source_path("tests/golden/tiny_exactrope.yaml") + " --from " + dir_ +
                         "/ck21 --to " + dir_ + "/q12 --quantization-bit-width 4 --tensor 1 --pipeline 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = testing::run_command("/usr/bin/python3 " + source_path("tests/reference/glm_quantize_reference.py") +
                           " --check-checkpoint " + dir_ + "/q12 --weights " + fp16);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("tensors match the released 4-bit quantization"), std::string::npos) << r.output;
  r = import(source_path(kSat), dir_ + "/bad", "--tensor 1 --pipeline 1 --quantization-bit-width 5");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--quantization-bit-width must be 4 or 8, got 5"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ + "/bad"));
}

TEST_F(ImportSat, WrongModelsSplitsAndDamagedFoldersAreRefusedBeforeWriting) {
  const std::string sat = source_path(kSat), to = dir_ + "/out";
  struct Case {
    std::string what, from, extra;
    std::vector<std::string> expect;
  };
  // a copy of the fixture with a truncated rank file, and one without `latest`
  const std::string truncated = dir_ + "/truncated", no_latest = dir_ + "/no_latest";
  fs::copy(sat, truncated, fs::copy_options::recursive);
  fs::resize_file(truncated + "/7/mp_rank_01_model_states.pt", 70000);
  fs::copy(sat, no_latest, fs::copy_options::recursive);
  fs::remove(no_latest + "/latest");
  // one rank file of two: the pieces are half the size the config expects over 1 rank
  const std::string one_rank = dir_ + "/one_rank";
  fs::create_directories(one_rank + "/7");
  fs::copy(sat + "/latest", one_rank + "/latest");
  fs::copy(sat + "/7/mp_rank_00_model_states.pt", one_rank + "/7/mp_rank_00_model_states.pt");
  const std::vector<Case> cases = {
      {"another hidden size", sat, "--set model.hidden_size=32",
       {"size mismatch for transformer.word_embeddings.weight", "mp_rank_00_model_states.pt",
        "the checkpoint holds [128, 64]", "the config expects [128, 32]"}},
      {"another ffn size", sat, "--set model.ffn_hidden_size=64",
       {"size mismatch for transformer.layers.0.mlp.dense_h_to_4h.weight", "[128, 64]", "[64, 64]"}},
      {"fewer layers", sat, "--set model.num_layers=1",
       {"tensors the config has no parameter for: transformer.layers.1."}},
      {"more layers", sat, "--set model.num_layers=3",
       {"missing tensors the config expects: transformer.layers.2."}},
      {"a new layout that does not divide", sat, "--tensor 3",
       {"--tensor 3", "does not divide 4 attention heads"}},
      {"a config the source split does not fit", sat, "--set model.num_attention_heads=1",
       {"split over 2 tensor-parallel ranks", "does not divide 1 attention heads"}},
      {"a missing rank file", one_rank, "",
       {"the pieces look like a split over 2 tensor-parallel ranks, but the folder holds 1 mp_rank files"}},
      {"a truncated rank file", truncated, "",
       {truncated + "/7/mp_rank_01_model_states.pt", "truncated"}},
      {"no latest", no_latest, "", {no_latest + "/latest: missing"}},
  };
  for (const Case& c : cases) {
    const auto r = import(c.from, to, c.extra);
    EXPECT_NE(r.exit_code, 0) << c.what << ": " << r.output;
    for (const std::string& e : c.expect) EXPECT_NE(r.output.find(e), std::string::npos) << c.what << ": " << r.output;
    EXPECT_FALSE(fs::exists(to)) << c.what << ": wrote " << to;
  }
}

}  // namespace
}  // namespace glmrt
