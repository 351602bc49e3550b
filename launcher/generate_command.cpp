// glmrt generate: GLM blank filling from a checkpoint or full weights, on any tensor x pipeline
// layout. Queries come from --prompt / --prompt-ids, a file (one per line) or the terminal.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "launcher/inference_setup.h"

namespace glmrt {

namespace {

std::vector<int32_t> parse_ids(const std::string& text, const std::string& where) {
  std::vector<int32_t> ids;
  std::string item;
  std::string s = text;
  for (char& c : s)
    if (c == ',') c = ' ';
  std::istringstream in(s);
  while (in >> item) {
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 0 || v > INT32_MAX)
      throw InputError(where + ": '" + item + "' is not a token id");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty()) throw InputError(where + ": no token ids");
  return ids;
}

struct Query {
  std::string where;  // for messages: "--prompt", "F:3"
  std::string text;   // as given (text mode)
  GenerationRequest request;
};

std::string render(const InferenceSetup& s, const Query& q, const GenerationResult& r, bool json,
                   size_t index) {
  if (json) {
    nlohmann::json j;
    j["query"] = index;
    j["prompt_ids"] = q.request.prompt_ids;
    if (!r.error.empty()) {
      j["error"] = r.error;
    } else {
      j["output_ids"] = r.output_ids;
      j["spans"] = r.spans;
      j["generated_tokens"] = r.generated_tokens;
      j["finish_reason"] = r.finish_reason;
      if (s.tokenizer) j["text"] = s.tokenizer->decode(r.output_ids);
      if (q.request.params.logprobs >= 0) {  // per token of the spans: [token, logprob, [[id, logprob], ...]]
        nlohmann::json lps = nlohmann::json::array();
        for (const TokenLogprobs& lp : r.logprobs) lps.push_back({lp.token, lp.logprob, lp.top});
        j["logprobs"] = std::move(lps);
      }
    }
    return j.dump() + "\n";
  }
  if (!r.error.empty()) return "Error (" + q.where + "): " + r.error + "\n";
  if (s.tokenizer) return s.tokenizer->decode(r.output_ids) + "\n";
  std::string out;
  for (size_t i = 0; i < r.output_ids.size(); ++i) {  // no "," + std::string&& (a GCC 12 warning)
    if (i) out += ',';
    out += std::to_string(r.output_ids[i]);
  }
  return out + "\n";
}

}  // namespace

int run_generate(const Args& args) {
  po::options_description desc("glmrt generate");
  desc.add_options()
    ("prompt", po::value<std::string>(), "one query as text (needs the config's tokenizer)")
    ("prompt-ids", po::value<std::string>(), "one query as token ids: 5,17,...")
    ("input-file", po::value<std::string>(), "queries, one per line")
    ("input-format", po::value<std::string>()->default_value("auto"),
     "text or ids (comma-separated token ids); auto = text with a tokenizer, else ids")
    ("json", po::bool_switch(), "one JSON object per query: output_ids, spans, text")
    ("output", po::value<std::string>(), "write the answers here instead of stdout")
    ("timing", po::bool_switch(), "print prefill and per-step decode times as one JSON line on stderr");
  add_inference_options(desc);
  add_generation_options(desc);
  po::variables_map vm;
  if (!parse_options("generate", desc, args, vm)) return 0;
  const GenerationParams params = generation_params(vm);
  const int sources = static_cast<int>(vm.count("prompt") + vm.count("prompt-ids") + vm.count("input-file"));
  if (sources > 1) throw InputError("give at most one of --prompt, --prompt-ids and --input-file");
  const std::string format = vm["input-format"].as<std::string>();
  if (format != "auto" && format != "text" && format != "ids")
    throw InputError("--input-format: '" + format + "' is not auto, text or ids");
  if (vm.count("input-file") && !std::filesystem::is_regular_file(vm["input-file"].as<std::string>()))
    throw InputError("--input-file " + vm["input-file"].as<std::string>() + ": no such file");

  InferenceSetup s = setup_inference(vm, "generate");
  const bool root = s.rt.is_world_root();
  const bool json = vm["json"].as<bool>();
  const bool ids_format = format == "ids" || (format == "auto" && !s.tokenizer);
  auto make_query = [&](const std::string& line, const std::string& where, bool as_ids) {
    Query q;
    q.where = where;
    q.text = line;
    if (as_ids) {
      q.request.prompt_ids = parse_ids(line, where);
    } else {
      if (!s.tokenizer)
        throw InputError(where + ": text needs a tokenizer (the config has no tokenizer section); "
                         "give token ids (--prompt-ids, --input-format ids)");
      q.request.prompt_ids = s.tokenizer->encode(line);
    }
    q.request.params = params;
    const std::string problem = GenerationEngine::check_request(q.request, s.rc.model);
    if (!problem.empty()) throw InputError(where + ": " + problem);
    return q;
  };

  // Batch mode: every query is read and checked before any is computed.
  std::vector<Query> queries;
  const bool interactive = sources == 0 && isatty(STDIN_FILENO);
  if (root && !interactive) {
    if (vm.count("prompt")) {
      queries.push_back(make_query(vm["prompt"].as<std::string>(), "--prompt", false));
    } else if (vm.count("prompt-ids")) {
      queries.push_back(make_query(vm["prompt-ids"].as<std::string>(), "--prompt-ids", true));
    } else {
      const std::string path = vm.count("input-file") ? vm["input-file"].as<std::string>() : "stdin";
      std::ifstream file;
      if (vm.count("input-file")) file.open(path);
      std::istream& in = vm.count("input-file") ? static_cast<std::istream&>(file) : std::cin;
      std::string line;
      for (int64_t n = 1; std::getline(in, line); ++n) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        queries.push_back(make_query(line, path + ":" + std::to_string(n), ids_format));
      }
      if (queries.empty()) throw InputError(path + ": no queries");
    }
  }

  std::string output;
  int64_t generated = 0;
  const auto start = std::chrono::steady_clock::now();
  if (!interactive) {
    std::vector<GenerationRequest> requests;
    for (const Query& q : queries) requests.push_back(q.request);
    const std::vector<GenerationResult> results = s.engine->generate(requests);
    for (size_t i = 0; root && i < results.size(); ++i) {
      output += render(s, queries[i], results[i], json, i);
      generated += results[i].generated_tokens;
    }
  } else {
    // One query per line from the terminal; rank 0 tells the others whether another comes.
    for (size_t index = 0;; ++index) {
      Tensor more = Tensor::zeros({1}, DType::I64);
      Query q;
      if (root) {
        std::string line;
        while (true) {
          std::fprintf(stderr, "Input: ");
          if (!std::getline(std::cin, line) || line == "stop") break;
          if (line.find_first_not_of(" \t") == std::string::npos) continue;
          try {
            q = make_query(line, "input", ids_format);
            more.data_as<int64_t>()[0] = 1;
          } catch (const InputError& e) {
            std::fprintf(stderr, "%s\n", e.what());
            continue;
          }
          break;
        }
      }
      s.rt.groups->world->broadcast(more, 0);
      if (more.data_as<int64_t>()[0] == 0) break;
      const auto results = s.engine->generate({q.request});
      if (root) {
        std::fputs(("Output: " + render(s, q, results[0], json, index)).c_str(), stdout);
        std::fflush(stdout);
      }
    }
    return 0;
  }
  if (!root) return 0;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (vm.count("output")) {
    const std::string path = vm["output"].as<std::string>();
    const std::string tmp = path + ".tmp";
    {
      std::ofstream f(tmp, std::ios::binary);
      f << output;
      if (!f.flush()) throw InputError("--output " + path + ": cannot write");
    }
    std::filesystem::rename(tmp, path);
  } else {
    std::fputs(output.c_str(), stdout);
    std::fflush(stdout);
  }
  if (vm["timing"].as<bool>()) {
    const EngineStats& st = s.engine->stats();
    nlohmann::json j;
    j["prefill_steps"] = st.prefill_steps;
    j["prefill_tokens"] = st.prefill_tokens;
    j["prefill_seconds"] = st.prefill_seconds;
    j["decode_steps"] = st.decode_steps;
    j["decode_tokens"] = st.decode_tokens;
    j["decode_seconds"] = st.decode_seconds;
    j["decode_ms_per_step"] = st.decode_steps ? 1e3 * st.decode_seconds / double(st.decode_steps) : 0.0;
    std::fprintf(stderr, "glmrt generate timing: %s\n", j.dump().c_str());
  }
  std::fprintf(stderr, "glmrt generate: %zu queries, %lld tokens generated in %.2f s (%.1f tokens/s), layout %s\n",
               queries.size(), static_cast<long long>(generated), seconds,
               seconds > 0 ? double(generated) / seconds : 0.0,
               s.rt.groups->topo.layout().str().c_str());
  return 0;
}

}  // namespace glmrt
