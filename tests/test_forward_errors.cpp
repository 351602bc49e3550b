// Every bad input of `glmrt forward` is refused: non-zero exit, a message naming the problem,
// and no output file.
#include <filesystem>
#include <fstream>

#include "checkpoint/safetensors.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

using testing::source_path;

class ForwardErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::temp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }
  // Rewrites the golden weights with `edit` applied to the tensor list.
  template <class Edit>
  std::string edited_weights(Edit edit) {
    SafetensorsReader golden(source_path("tests/golden/tiny_weights.safetensors"));
    NamedTensors named;
    for (const auto& e : golden.entries()) named.emplace_back(e.name, golden.tensor(e.name));
    edit(named);
    const std::string p = dir_ + "/weights.safetensors";
    write_safetensors(p, named);
    return p;
  }

  // Runs forward and checks the refusal.
  void expect_refused(const std::string& needle, std::string weights = "", std::string input = "",
                      std::string config = "") {
    if (weights.empty()) weights = source_path("tests/golden/tiny_weights.safetensors");
    if (input.empty()) input = source_path("tests/golden/forward_plain.json");
    if (config.empty()) config = source_path("tests/golden/tiny_exactrope.yaml");
    const std::string out = dir_ + "/out.safetensors";
    auto r = testing::run_glmrt("forward --config " + config + " --weights " + weights +
                                " --input " + input + " --output " + out);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos)
        << "expected the message to mention: " << needle << "\ngot: " << r.output;
    EXPECT_FALSE(std::filesystem::exists(out)) << "an output file was left behind";
    for (const auto& entry : std::filesystem::directory_iterator(dir_))
      EXPECT_EQ(entry.path().string().find(".tmp."), std::string::npos) << entry.path();
  }

  std::string dir_;
};

const char* kRow = R"({"tokens": [[1, 2, 3, 4]], "position_ids": [[0, 1, 2, 3]], "sep": [[2]]})";

TEST_F(ForwardErrors, ValidInputWritesLogits) {
  const std::string out = dir_ + "/out.safetensors";
  auto r = testing::run_glmrt("forward --config " + source_path("tests/golden/tiny_exactrope.yaml") +
                              " --weights " + source_path("tests/golden/tiny_weights.safetensors") +
                              " --input " + write("in.json", kRow) + " --output " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(SafetensorsReader(out).tensor("logits").shape(), (Shape{1, 4, 256}));
}

TEST_F(ForwardErrors, MissingTensor) {
  expect_refused("missing tensor transformer.final_layernorm.bias",
                 edited_weights([](NamedTensors& n) {
                   std::erase_if(n, [](auto& p) { return p.first == "transformer.final_layernorm.bias"; });
                 }));
}

TEST_F(ForwardErrors, ExtraTensor) {
  expect_refused("unexpected tensor transformer.layers.2.input_layernorm.weight",
                 edited_weights([](NamedTensors& n) {
                   n.emplace_back("transformer.layers.2.input_layernorm.weight",
                                  Tensor::zeros({64}, DType::F32));
                 }));
}

TEST_F(ForwardErrors, MisShapedTensorNamesBothShapes) {
  expect_refused("tensor transformer.layers.1.attention.dense.weight has shape [64, 32], the config needs [64, 64]",
                 edited_weights([](NamedTensors& n) {
                   for (auto& [name, t] : n)
                     if (name == "transformer.layers.1.attention.dense.weight")
                       t = Tensor::zeros({64, 32}, DType::F32);
                 }));
}

TEST_F(ForwardErrors, TruncatedWeightFile) {
  const std::string p = dir_ + "/trunc.safetensors";
  std::filesystem::copy_file(source_path("tests/golden/tiny_weights.safetensors"), p);
  std::filesystem::resize_file(p, std::filesystem::file_size(p) - 100);
  expect_refused("truncated", p);
}

TEST_F(ForwardErrors, TokenIdOutsideVocabulary) {
  expect_refused("row 0, token 2: id 256 outside the vocabulary [0, 256)", "",
                 write("in.json", R"({"tokens": [[1, 2, 256, 4]], "position_ids": [[0, 1, 2, 3]], "sep": [[2]]})"));
}

TEST_F(ForwardErrors, PositionBeyondMaxSequenceLength) {
  expect_refused("row 0, token 3: position 2048 outside [0, max_sequence_length 2048)", "",
                 write("in.json", R"({"tokens": [[1, 2, 3, 4]], "position_ids": [[0, 1, 2, 2048]], "sep": [[2]]})"));
}

TEST_F(ForwardErrors, SepOutOfRange) {
  expect_refused("row 0, segment 0: sep 5 outside [0, 4]", "",
                 write("in.json", R"({"tokens": [[1, 2, 3, 4]], "position_ids": [[0, 1, 2, 3]], "sep": [[5]]})"));
  expect_refused("\"sep\" has 1 entries for 2 segment(s)", "",
                 write("in.json", R"({"tokens": [[1, 2, 3, 4]], "position_ids": [[0, 1, 2, 3]], "sep": [[1]], "segment_lengths": [[2, 2]]})"));
}

TEST_F(ForwardErrors, SegmentLengthsOutOfRange) {
  expect_refused("segment lengths sum to 3, the row has 4 tokens", "",
                 write("in.json", R"({"tokens": [[1, 2, 3, 4]], "position_ids": [[0, 1, 2, 3]], "sep": [[1, 1]], "segment_lengths": [[2, 1]]})"));
  expect_refused("segment lengths exceed the row length 4", "",
                 write("in.json", R"({"tokens": [[1, 2, 3, 4]], "position_ids": [[0, 1, 2, 3]], "sep": [[1, 1]], "segment_lengths": [[2, 3]]})"));
  expect_refused("segment 1: length 0 must be positive", "",
                 write("in.json", R"({"tokens": [[1, 2, 3, 4]], "position_ids": [[0, 1, 2, 3]], "sep": [[1, 0, 1]], "segment_lengths": [[2, 0, 2]]})"));
}

TEST_F(ForwardErrors, RaggedRows) {
  expect_refused("row 1 of \"tokens\" has 3 entries, expected 4 (rows must have equal length)", "",
                 write("in.json", R"({"tokens": [[1, 2, 3, 4], [1, 2, 3]], "position_ids": [[0, 1, 2, 3], [0, 1, 2]], "sep": [[1], [1]]})"));
  expect_refused("\"position_ids\" has 1 rows, \"tokens\" has 2", "",
                 write("in.json", R"({"tokens": [[1, 2], [3, 4]], "position_ids": [[0, 1]], "sep": [[1], [1]]})"));
}

TEST_F(ForwardErrors, MalformedJson) {
  expect_refused("malformed JSON", "", write("in.json", R"({"tokens": [[1, 2, 3, 4]], )"));
  expect_refused("unknown key \"segments\"", "",
                 write("in.json", R"({"tokens": [[1]], "position_ids": [[0]], "sep": [[1]], "segments": []})"));
  expect_refused("missing key \"sep\"", "", write("in.json", R"({"tokens": [[1]], "position_ids": [[0]]})"));
  expect_refused("\"tokens\" row 0, entry 1: \"x\" is not a 32-bit integer", "",
                 write("in.json", R"({"tokens": [[1, "x"]], "position_ids": [[0, 1]], "sep": [[1]]})"));
  expect_refused("cannot open input file", "", dir_ + "/absent.json");
}

TEST_F(ForwardErrors, MalformedYaml) {
  expect_refused("malformed YAML", "", "", write("c.yaml", "model: {num_layers: 2,\n"));
  expect_refused("unknown key model.num_layer", "", "",
                 write("c.yaml", "model: {num_layer: 2, hidden_size: 64, num_attention_heads: 4, "
                                 "ffn_hidden_size: 128, vocab_size: 256, max_sequence_length: 2048}\n"));
}

TEST_F(ForwardErrors, BadFlags) {
  auto r = testing::run_glmrt("forward --config x.yaml --frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("frobnicate"), std::string::npos) << r.output;
  r = testing::run_glmrt("forward --config x.yaml");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("is required but missing"), std::string::npos) << r.output;
  r = testing::run_glmrt("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown command 'frobnicate'"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace glmrt
