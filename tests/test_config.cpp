// YAML configs: the shipped ones load, and every malformed config is refused with its key path.
#include <fstream>

#include "launcher/run_config.h"
#include "model/parameters.h"
#include "tests/test_util.h"

namespace glmrt {
namespace {

std::string write_config(const std::string& name, const std::string& text) {
  const std::string path = testing::temp_dir("config") + "/" + name + ".yaml";
  std::ofstream(path) << text;
  return path;
}

const char* kTiny = R"(model:
  num_layers: 2
  hidden_size: 64
  num_attention_heads: 4
  ffn_hidden_size: 128
  vocab_size: 256
  max_sequence_length: 2048
tokens: {MASK: 250, gMASK: 251, sMASK: 252, eod: 253, sop: 254, eop: 255, eos: 249, pad: 0}
)";

TEST(Config, Glm130bHasTheReleasedParameterCount) {
  RunConfig rc = load_run_config(testing::source_path("configs/glm-130b.yaml"));
  EXPECT_EQ(rc.model.head_dim(), 128);
  EXPECT_NEAR(rc.model.alpha(), 11.8322, 1e-4);
  int64_t total = 0;
  for (const ParamSpec& s : glm_param_specs(rc.model)) total += shape_numel(s.shape);
  EXPECT_EQ(total, 128697794560LL);
  EXPECT_EQ(rc.model.tokens.gmask, 150001);
  EXPECT_EQ(rc.model.tokens.eos, 20002);
}

TEST(Config, TinyConfigLoads) {
  RunConfig rc = load_run_config(testing::source_path("configs/tiny.yaml"));
  EXPECT_EQ(rc.model.num_layers, 4);
  EXPECT_FALSE(rc.model.rotary_fp16_tables);
}

void expect_config_error(const std::string& text, const std::string& needle) {
  const std::string path = write_config("bad", text);
  try {
    load_run_config(path);
    ADD_FAILURE() << "accepted a bad config; expected an error mentioning " << needle;
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(Config, RefusesUnknownKeysByPath) {
  std::string text = kTiny;
  text.replace(text.find("  hidden_size"), 0, "  hidden_sise: 3\n");
  expect_config_error(text, "unknown key model.hidden_sise");
  expect_config_error(std::string(kTiny) + "trian: {}\n", "unknown key trian");
  expect_config_error(std::string(kTiny).replace(std::string(kTiny).find("pad: 0"), 6, "pda: 0"),
                      "unknown key tokens.pda");
}

TEST(Config, RefusesBadValues) {
  std::string t = kTiny;
  expect_config_error(std::string(t).replace(t.find("hidden_size: 64"), 15, "hidden_size: abc"),
                      "model.hidden_size: cannot read 'abc'");
  expect_config_error(std::string(t).replace(t.find("num_attention_heads: 4"), 22,
                                             "num_attention_heads: 5"),
                      "model.num_attention_heads");
  expect_config_error(std::string(t).replace(t.find("  vocab_size: 256\n"), 18, ""),
                      "model.vocab_size: missing required key");
  expect_config_error(std::string(t).replace(t.find("eod: 253"), 8, "eod: 999"), "tokens.eod");
  expect_config_error(std::string(t).replace(t.find("tokens:"), 0, "  rotary_fp16_tables: maybe\n"),
                      "model.rotary_fp16_tables: cannot read 'maybe'");
  expect_config_error("model: [1, 2\n", "malformed YAML");
  expect_config_error("tokens: {}\n", "missing required section `model`");
}

TEST(Config, MissingFileIsNamed) {
  try {
    load_run_config("/nonexistent/glmrt.yaml");
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/glmrt.yaml"), std::string::npos);
  }
}

}  // namespace
}  // namespace glmrt
