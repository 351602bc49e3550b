// The tokenizer: a sentencepiece model trained here (glmrt train-tokenizer's code, on the small
// English/Chinese corpus tests/data/tokenizer_corpus.txt) plus the GLM special tokens appended
// after its vocabulary. Text round-trips exactly (spaces, blank lines, Chinese, emoji through
// byte fallback); the special strings map to the config's ids; bad special ids are refused.
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "data/tokenizer.h"
#include "kernels/error.h"
#include "launcher/commands.h"
#include "tests/test_util.h"

namespace glmrt {
int run_train_tokenizer(const Args& args);  // launcher/tokenizer_command.cpp

namespace {

using testing::source_path;
constexpr int kSpVocab = 800;

// The model, trained once per test process into a temporary directory.
class TrainedModel {
 public:
  TrainedModel() : dir_(testing::temp_dir("tokenizer_model")), path_(dir_ + "/test.model") {
    const int rc = run_train_tokenizer({"--input", source_path("tests/data/tokenizer_corpus.txt"),
                                        "--vocab-size", std::to_string(kSpVocab), "--output", path_,
                                        "--threads", "2"});
    if (rc != 0) throw std::runtime_error("train-tokenizer failed");
  }
  ~TrainedModel() { std::filesystem::remove_all(dir_); }
  const std::string& path() const { return path_; }

 private:
  std::string dir_, path_;
};

const std::string& model_path() {
  static TrainedModel m;
  return m.path();
}

// The tiny config with the special tokens appended after the sentencepiece vocabulary.
GlmConfig config_for_model(int64_t vocab_size = 816) {
  GlmConfig c;
  c.vocab_size = vocab_size;
  c.tokens = TokenIds{.mask = 800, .gmask = 801, .smask = 802, .eod = 803, .sop = 804, .eop = 805,
                      .eos = 2, .pad = 0};
  return c;
}

void expect_round_trip(const Tokenizer& tok, const std::string& text) {
  const std::vector<int32_t> ids = tok.encode(text);
  for (int32_t id : ids) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, tok.vocab_size());
  }
  EXPECT_EQ(tok.decode(ids), text) << "ids: " << ::testing::PrintToString(ids);
}

template <class F>
void expect_config_error(F make, const std::string& needle) {
  try {
    make();
    ADD_FAILURE() << "accepted; expected an error naming " << needle;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, TrainedModelHasTheRequestedVocabulary) {
  Tokenizer tok(model_path(), config_for_model());
  EXPECT_EQ(tok.sp_vocab_size(), kSpVocab);
  EXPECT_EQ(tok.vocab_size(), 816);
  // "\n" is a piece of its own, and eos is sentencepiece's </s>.
  const auto nl = tok.encode("\n");
  ASSERT_EQ(nl.size(), 1u);
  EXPECT_EQ(tok.piece(nl[0]), "\n");
  EXPECT_EQ(tok.piece(2), "</s>");
}

TEST(Tokenizer, RoundTripsEnglishWithSpacesAndBlankLines) {
  Tokenizer tok(model_path(), config_for_model());
  expect_round_trip(tok, "The river runs past the old mill.");
  expect_round_trip(tok, "  two leading spaces,   three inside,\ttab, trailing  ");
  expect_round_trip(tok, "line one\n\n\nline four after two blank lines\n \n  \nend\n\n");
  expect_round_trip(tok, "\n\nstarts with newlines");
  expect_round_trip(tok, "Digits 1234567890 and 3.14159, CAPITALS and punctuation!?;:'\"()[]{}<>");
  expect_round_trip(tok, "Windows\r\nline\r\nendings");
  expect_round_trip(tok, " ");
  expect_round_trip(tok, "");
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(Tokenizer, RoundTripsChinese) {
  Tokenizer tok(model_path(), config_for_model());
  expect_round_trip(tok, "清晨的河水从老磨坊旁边流过，在小镇醒来之前转向大海。");
  expect_round_trip(tok, "大型语言模型从大量文档中学习。\n\n第二段：计算机把文字存储为数字。");
  // Characters absent from the training corpus fall back to bytes.
  expect_round_trip(tok, "龘靐齉爩，鑫森淼焱垚。");
  const auto ids = tok.encode("龘");
  EXPECT_EQ(ids.size(), 3u);  // three UTF-8 bytes
  for (int32_t id : ids) EXPECT_EQ(tok.piece(id).rfind("<0x", 0), 0u) << tok.piece(id);
}

TEST(Tokenizer, RoundTripsEmojiAndMixedText) {
  Tokenizer tok(model_path(), config_for_model());
  expect_round_trip(tok, "emoji 😀🎉👍🏽 done");
  expect_round_trip(tok, "The train 火车 arrives at 10:45，二十分钟以后 leaves again. 🚆\n"
                         "Ünïcödé àccents, ελληνικά, русский, العربية, 日本語のテキスト.");
  expect_round_trip(tok, "tabs\tand\u00a0no-break\u3000ideographic space");
}

TEST(Tokenizer, RoundTripsTheWholeCorpus) {
  Tokenizer tok(model_path(), config_for_model());
  std::ifstream f(source_path("tests/data/tokenizer_corpus.txt"), std::ios::binary);
  const std::string corpus(std::istreambuf_iterator<char>(f), {});
  ASSERT_GT(corpus.size(), 20000u);
  const auto ids = tok.encode(corpus);
  EXPECT_EQ(tok.decode(ids), corpus);
  // The model compresses the text it was trained on: Chinese characters (3 bytes) become one
  // piece or less; English words take a few pieces (most of this small vocabulary is bytes and
  // Chinese characters).
  EXPECT_LT(ids.size() * 3, corpus.size() * 2) << ids.size() << " tokens for " << corpus.size() << " bytes";
  const std::string english = "Every morning the baker opens the shop at six, and the smell of "
                              "fresh bread fills the street.";
  EXPECT_LT(tok.encode(english).size() * 3, english.size() * 2) << tok.encode(english).size();
}

TEST(Tokenizer, SpecialTokens) {
  const GlmConfig c = config_for_model();
  Tokenizer tok(model_path(), c);
  const auto ids = tok.encode("[gMASK]<|startofpiece|>text<|endofpiece|>");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids[0], c.tokens.gmask);
  EXPECT_EQ(ids[1], c.tokens.sop);
  EXPECT_EQ(ids.back(), c.tokens.eop);
  EXPECT_EQ(tok.decode(ids), "[gMASK]<|startofpiece|>text<|endofpiece|>");

  const std::string all = "a[MASK]b [sMASK] c<|endoftext|>\n[gMASK][MASK]";
  const auto a = tok.encode(all);
  EXPECT_EQ(std::count(a.begin(), a.end(), c.tokens.mask), 2);
  EXPECT_EQ(std::count(a.begin(), a.end(), c.tokens.smask), 1);
  EXPECT_EQ(std::count(a.begin(), a.end(), c.tokens.eod), 1);
  EXPECT_EQ(std::count(a.begin(), a.end(), c.tokens.gmask), 1);
  EXPECT_EQ(tok.decode(a), all);
  EXPECT_EQ(tok.decode({c.tokens.eod}), "<|endoftext|>");
  EXPECT_EQ(tok.decode({c.tokens.mask, c.tokens.sop}), "[MASK]<|startofpiece|>");

  // Near misses stay text.
  for (const std::string s : {"[MASK", "<|endoftext", "[mask]", "<|startofpiece>", "[[gMASK"}) {
    const auto n = tok.encode(s);
    for (int32_t id : n) EXPECT_LT(id, tok.sp_vocab_size()) << s;
    EXPECT_EQ(tok.decode(n), s);
  }
  std::vector<int32_t> expected = tok.encode("[");
  expected.push_back(c.tokens.gmask);
  for (int32_t id : tok.encode("]")) expected.push_back(id);
  EXPECT_EQ(tok.encode("[[gMASK]]"), expected);

  // eos (sentencepiece's </s>), pad and unused ids after the specials render as nothing; ids
  // outside the vocabulary throw.
  EXPECT_EQ(tok.decode({c.tokens.eos, 5, c.tokens.pad, 810}), tok.decode({5}));
  EXPECT_THROW(tok.decode({816}), InputError);
  EXPECT_THROW(tok.decode({-1}), InputError);
}

TEST(Tokenizer, SpecialIdsCanBeAnywhereAfterTheVocabulary) {
  GlmConfig c = config_for_model(1024);
  c.tokens = TokenIds{.mask = 1000, .gmask = 1001, .smask = 1002, .eod = 1003, .sop = 1004,
                      .eop = 1005, .eos = 1006, .pad = 1007};
  Tokenizer tok(model_path(), c);
  EXPECT_EQ(tok.encode("x<|endoftext|>").back(), 1003);
  EXPECT_EQ(tok.decode({1006, 1007, 1003}), "<|endoftext|>");
}

TEST(Tokenizer, RefusesBadSpecialIds) {
  GlmConfig c = config_for_model();
  c.tokens.mask = 5;
  expect_config_error([&] { Tokenizer(model_path(), c, "cfg.yaml"); }, "cfg.yaml: tokens.MASK: id 5 is the sentencepiece piece");
  c = config_for_model();
  c.tokens.eop = 816;
  expect_config_error([&] { Tokenizer(model_path(), c); }, "tokens.eop: id 816 outside the vocabulary");
  c = config_for_model();
  c.tokens.sop = c.tokens.eod;
  expect_config_error([&] { Tokenizer(model_path(), c); }, "tokens.sop: id 803 is already the id of tokens.eod");
  c = config_for_model();
  c.tokens.pad = c.tokens.gmask;
  expect_config_error([&] { Tokenizer(model_path(), c); }, "tokens.pad");
  c = config_for_model(700);
  expect_config_error([&] { Tokenizer(model_path(), c); },
                      "model.vocab_size: 700 is smaller than the sentencepiece vocabulary");
}

TEST(Tokenizer, RefusesMissingOrBadModel) {
  const std::string dir = testing::temp_dir("tokenizer_bad_model");
  expect_config_error([&] { Tokenizer(dir + "/none.model", config_for_model()); },
                      "tokenizer.model: " + dir + "/none.model does not exist");
  std::ofstream(dir + "/junk.model") << "not a model";
  expect_config_error([&] { Tokenizer(dir + "/junk.model", config_for_model()); },
                      "tokenizer.model: cannot load");
  expect_config_error([&] { Tokenizer("", config_for_model()); }, "tokenizer.model");
  std::filesystem::remove_all(dir);
}

TEST(Tokenizer, EncodeIsThreadSafe) {
  Tokenizer tok(model_path(), config_for_model());
  const std::string text = "Every morning the baker opens the shop at six. 每天早上六点，面包师打开店门。";
  const auto expected = tok.encode(text);
  std::vector<std::thread> ts;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 200; ++i) bad += tok.encode(text) != expected;
    });
  for (auto& t : ts) t.join();
  EXPECT_EQ(bad, 0);
}

TEST(Tokenizer, DocumentReaderFormats) {
  const std::string dir = testing::temp_dir("tokenizer_reader");
  auto docs = [&](const std::string& name, const std::string& text, TextFormat f) {
    std::ofstream(dir + "/" + name, std::ios::binary) << text;
    DocumentReader r(dir + "/" + name, f);
    std::vector<std::string> out;
    for (std::string d; r.next(d);) out.push_back(d);
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(docs("a.txt", "\n\none\ntwo  \n\n \t\nthree\r\nfour\n\n\n", TextFormat::Auto),
            (V{"one\ntwo  ", "three\nfour"}));
  EXPECT_EQ(docs("b.txt", "one\n\n  \ntwo\r\nthree", TextFormat::Lines), (V{"one", "two", "three"}));
  EXPECT_EQ(docs("c.jsonl", "{\"text\": \"a\\nb\"}\n\n{\"text\": \"\"}\n{\"text\": \"c\", \"id\": 3}\n",
                 TextFormat::Auto),
            (V{"a\nb", "c"}));
  EXPECT_EQ(resolve_text_format(TextFormat::Auto, "x.json"), TextFormat::Jsonl);
  EXPECT_EQ(resolve_text_format(TextFormat::Auto, "x.md"), TextFormat::Text);
  EXPECT_THROW(parse_text_format("csv"), ConfigError);
  try {
    docs("d.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n", TextFormat::Auto);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("d.jsonl:2: the object has no field \"text\""),
              std::string::npos) << e.what();
  }
  EXPECT_THROW(check_readable_files({dir}), InputError);
  EXPECT_THROW(check_readable_files({dir + "/missing"}), InputError);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace glmrt
