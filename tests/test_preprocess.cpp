// glmrt preprocess and glmrt train-tokenizer, end to end through the binary: text, lines and JSON
// lines inputs become token files with eod after every document; bad inputs are refused with a
// message naming them and leave no output behind.
#include <algorithm>
#include <filesystem>
#include <fstream>

#include "data/token_file.h"
#include "data/tokenizer.h"
#include "launcher/commands.h"
#include "launcher/run_config.h"
#include "tests/test_util.h"

namespace glmrt {
int run_train_tokenizer(const Args& args);  // launcher/tokenizer_command.cpp

namespace {

namespace fs = std::filesystem;
using testing::source_path;

// A sentencepiece model trained once per test process.
class SharedModel {
 public:
  SharedModel() : dir_(testing::temp_dir("preprocess_model")), path_(dir_ + "/test.model") {
    if (run_train_tokenizer({"--input", source_path("tests/data/tokenizer_corpus.txt"),
                             "--vocab-size", "800", "--output", path_, "--threads", "2"}) != 0)
      throw std::runtime_error("train-tokenizer failed");
  }
  ~SharedModel() { fs::remove_all(dir_); }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
};

// Runs the glmrt binary. A single rank needs no fast interconnect: OpenMPI's ob1 layer starts in
// a fraction of the time UCX takes (0.2 s instead of 0.45 s per run here).
testing::CommandResult glmrt(const std::string& args) {
  return testing::run_command("OMPI_MCA_pml=ob1 " + std::string(GLMRT_BINARY) + " " + args);
}

const std::string& shared_model() {
  static SharedModel m;
  return m.path();
}

const char* kModelYaml =
    "model: {num_layers: 2, hidden_size: 64, num_attention_heads: 4, ffn_hidden_size: 170,\n"
    "        vocab_size: 816, max_sequence_length: 256}\n"
    "tokens: {MASK: 800, gMASK: 801, sMASK: 802, eod: 803, sop: 804, eop: 805, eos: 2, pad: 0}\n";
constexpr int32_t kEod = 803;

class Preprocess : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::temp_dir(std::string("preprocess_") +
                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::copy_file(shared_model(), dir_ + "/tok.model");
    // The model path is relative to the config file.
    config_ = write("run.yaml", std::string(kModelYaml) + "tokenizer: {model: tok.model}\n");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  testing::CommandResult preprocess(const std::string& args) {
    return glmrt("preprocess --config " + config_ + " " + args);
  }
  Tokenizer tokenizer() const {
    return Tokenizer(dir_ + "/tok.model", load_run_config(config_).model);
  }
  // Every document ends with eod (and has no other), and decodes to the expected text.
  void expect_documents(const std::string& prefix, const std::vector<std::string>& texts) {
    TokenFile f(prefix);
    ASSERT_EQ(f.num_documents(), static_cast<int64_t>(texts.size()));
    const Tokenizer tok = tokenizer();
    int64_t total = 0;
    for (int64_t i = 0; i < f.num_documents(); ++i) {
      std::vector<int32_t> d = f.document(i);
      total += static_cast<int64_t>(d.size());
      ASSERT_FALSE(d.empty());
      EXPECT_EQ(d.back(), kEod) << "document " << i;
      EXPECT_EQ(std::count(d.begin(), d.end(), kEod), 1) << "document " << i;
      EXPECT_EQ(d, [&] { auto e = tok.encode(texts[i]); e.push_back(kEod); return e; }());
      d.pop_back();
      EXPECT_EQ(tok.decode(d), texts[i]);
    }
    EXPECT_EQ(f.num_tokens(), total);
  }
  // A refused run: non-zero exit, the message, and nothing written under `prefix`.
  void expect_refused(const testing::CommandResult& r, const std::string& needle,
                      const std::string& prefix) {
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos)
        << "expected the message to mention: " << needle << "\ngot: " << r.output;
    for (const char* ext : {".bin", ".idx", ".bin.tmp", ".idx.tmp"})
      EXPECT_FALSE(fs::exists(prefix + ext)) << prefix + ext << " left behind";
  }

  std::string dir_, config_;
};

TEST_F(Preprocess, TextDocumentsSeparatedByBlankLines) {
  const std::string in = write("corpus.txt",
                               "The first document,\nwith two lines.\n\n\n"
                               "第二个文档：大型语言模型。\n  indented   spaces\n \n"
                               "Third: emoji 😀 and [MASK] literal.\n");
  const std::string out = dir_ + "/out";
  auto r = preprocess("--input " + in + " --output " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_documents(out, {"The first document,\nwith two lines.",
                         "第二个文档：大型语言模型。\n  indented   spaces",
                         "Third: emoji 😀 and [MASK] literal."});
  EXPECT_NE(r.output.find("glmrt preprocess: 3 documents"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tokens/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(out + ".bin"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\r'), std::string::npos) << "no progress line without a terminal";
  EXPECT_FALSE(fs::exists(out + ".bin.tmp"));
  EXPECT_FALSE(fs::exists(out + ".idx.tmp"));
}

TEST_F(Preprocess, LinesAndJsonLinesFromSeveralInputs) {
  const std::string lines = write("a.txt", "one per line\n\n   \nsecond line 第二行\r\nthird");
  const std::string jsonl = write("b.jsonl",
                                  "{\"text\": \"json doc\\n\\nwith a blank line\", \"meta\": 1}\n"
                                  "\n"
                                  "{\"text\": \"\"}\n"
                                  "{\"text\": \"最后一个\"}\n");
  const std::string out = dir_ + "/out";
  // --format lines applies to every input; auto picks jsonl for .jsonl.
  auto r = preprocess("--format lines --input " + lines + " --output " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_documents(out, {"one per line", "second line 第二行", "third"});
  r = preprocess("--input " + lines + " " + jsonl + " --output " + out + " --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_documents(out, {"one per line", "second line 第二行\nthird", "json doc\n\nwith a blank line",
                         "最后一个"});
  EXPECT_NE(r.output.find("4 documents (1 empty skipped)"), std::string::npos) << r.output;
}

TEST_F(Preprocess, ProgressOnATerminal) {
  const std::string in = write("corpus.txt", "a document\n\nanother one\n");
  const std::string out = dir_ + "/out";
  // script(1) runs the command on a pseudo-terminal.
  auto r = testing::run_command("OMPI_MCA_pml=ob1 script -qec '" + std::string(GLMRT_BINARY) + " preprocess --config " +
                                config_ + " --input " + in + " --output " + out + "' /dev/null");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\rpreprocess: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("MB/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("ETA"), std::string::npos) << r.output;
  EXPECT_EQ(TokenFile(out).num_documents(), 2);
}

TEST_F(Preprocess, RefusesUnreadableInput) {
  const std::string good = write("good.txt", "fine\n");
  const std::string out = dir_ + "/out";
  expect_refused(preprocess("--input " + good + " " + dir_ + "/missing.txt --output " + out),
                 dir_ + "/missing.txt: cannot read", out);
  expect_refused(preprocess("--input " + dir_ + " --output " + out), "not a regular file", out);
  expect_refused(preprocess("--input " + good + " --output " + dir_ + "/no/such/dir/out"),
                 "cannot create", dir_ + "/no/such/dir/out");
  expect_refused(preprocess("--input " + write("empty.txt", "\n \n") + " --output " + out),
                 "no documents", out);
  expect_refused(preprocess("--format csv --input " + good + " --output " + out), "--format", out);
}

TEST_F(Preprocess, RefusesBadJsonLineAndKeepsTheOldOutput) {
  const std::string out = dir_ + "/out";
  ASSERT_EQ(preprocess("--input " + write("old.txt", "old output\n") + " --output " + out).exit_code, 0);
  std::string text;
  for (int i = 0; i < 50; ++i) text += "{\"text\": \"document number " + std::to_string(i) + "\"}\n";
  const std::string bad = write("bad.jsonl", text + "{\"text\": \"ok\"}\n{\"text\": 42}\n");
  auto r = preprocess("--input " + bad + " --output " + out);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(bad + ":52: field \"text\" is not a string"), std::string::npos) << r.output;
  write("bad2.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"unterminated\n");
  r = preprocess("--input " + dir_ + "/bad2.jsonl --output " + out);
  EXPECT_NE(r.output.find("bad2.jsonl:2: not valid JSON"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out + ".bin.tmp"));
  EXPECT_FALSE(fs::exists(out + ".idx.tmp"));
  expect_documents(out, {"old output"});  // untouched
}

TEST_F(Preprocess, RefusesMissingTokenizerModel) {
  const std::string in = write("in.txt", "text\n");
  const std::string out = dir_ + "/out";
  const std::string no_tok = write("no_tok.yaml", kModelYaml);
  expect_refused(glmrt("preprocess --config " + no_tok + " --input " + in + " --output " + out),
                 "tokenizer.model: preprocess needs a sentencepiece model", out);
  const std::string missing = write("missing.yaml", std::string(kModelYaml) + "tokenizer: {model: nope.model}\n");
  expect_refused(glmrt("preprocess --config " + missing + " --input " + in + " --output " + out),
                 "tokenizer.model: " + dir_ + "/nope.model does not exist", out);
  // --set supplies it; a vocabulary too small for the specials is refused naming the key.
  auto r = glmrt("preprocess --config " + no_tok + " --set tokenizer.model=" + dir_ +
                              "/tok.model --input " + in + " --output " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  fs::remove(out + ".bin");
  fs::remove(out + ".idx");
  expect_refused(preprocess("--set tokens.eod=3 --input " + in + " --output " + out),
                 "tokens.eod: id 3 is the sentencepiece piece", out);
}

TEST_F(Preprocess, TrainTokenizerCommand) {
  const std::string model = dir_ + "/cli.model";
  auto r = glmrt("train-tokenizer --input " + source_path("tests/data/tokenizer_corpus.txt") +
                              " --vocab-size 900 --model-type bpe --max-sentences 150 --output " + model);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("bpe model, 900 pieces"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("from 150 of 290 sentences"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tokens: {MASK: 900, gMASK: 901"), std::string::npos) << r.output;
  GlmConfig c;
  c.vocab_size = 906;
  c.tokens = TokenIds{.mask = 900, .gmask = 901, .smask = 902, .eod = 903, .sop = 904, .eop = 905,
                      .eos = 2, .pad = 0};
  Tokenizer tok(model, c);
  EXPECT_EQ(tok.sp_vocab_size(), 900);
  EXPECT_EQ(tok.decode(tok.encode("Round trip:\n  清晨的河水 😀")), "Round trip:\n  清晨的河水 😀");
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();

  const std::string other = dir_ + "/other.model";
  r = glmrt("train-tokenizer --input " + dir_ + "/missing.txt --vocab-size 700 --output " + other);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("missing.txt: cannot read"), std::string::npos) << r.output;
  r = glmrt("train-tokenizer --input " + write("tiny.txt", "too little text\n") +
                         " --vocab-size 700 --output " + other);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("sentencepiece training failed"), std::string::npos) << r.output;
  r = glmrt("train-tokenizer --input " + write("bad.jsonl", "{\"text\": 1}\n") +
                         " --vocab-size 700 --output " + other);
  EXPECT_NE(r.output.find("bad.jsonl:1: field \"text\" is not a string"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(other));
}

}  // namespace
}  // namespace glmrt
