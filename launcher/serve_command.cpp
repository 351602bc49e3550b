// glmrt serve: an HTTP server (inference/http_server.h) on world rank 0 of the job in front of
// the generation engine, which every rank runs (GenerationEngine::serve); with data-parallel
// replicas rank 0 shares the requests out among them (inference/replicas.h). SIGTERM, SIGUSR1 or
// SIGINT on rank 0 closes the request queue: queries in flight are answered, then every rank
// leaves the engine loop together and the job exits 0.
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "inference/http_server.h"
#include "launcher/inference_setup.h"
#include "launcher/stop_signal.h"

namespace glmrt {

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_interrupt(int) { g_interrupted = 1; }

// Closes the queue when a stop signal arrives. The handlers only set flags; closing (a mutex and
// a condition variable) happens here, on a normal thread that polls every 50 ms.
class SignalWatcher {
 public:
  explicit SignalWatcher(RequestQueue& queue)
      : thread_([this, &queue] {
          while (!done_.load()) {
            const int sig = stop_signal_received() ? stop_signal_received() : g_interrupted ? SIGINT : 0;
            if (sig) {
              std::fprintf(stderr, "glmrt serve: signal %d: finishing the queries in flight, then stopping\n", sig);
              std::fflush(stderr);
              queue.close();
              return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        }) {}
  ~SignalWatcher() {
    done_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace

int run_serve(const Args& args) {
  po::options_description desc("glmrt serve");
  add_inference_options(desc);
  desc.add_options()
    ("host", po::value<std::string>()->default_value("127.0.0.1"),
     "address to listen on (0.0.0.0: every interface)")
    ("port", po::value<int>()->default_value(8000), "TCP port; 0 = an ephemeral port")
    ("max-body-bytes", po::value<int64_t>()->default_value(1 << 20),
     "largest request body accepted (bigger: 413)")
    ("http-threads", po::value<int>()->default_value(128),
     "HTTP worker threads: the most connections served at once");
  po::options_description gen("generation defaults for requests that do not set them");
  add_generation_options(gen);
  desc.add(gen);
  po::variables_map vm;
  if (!parse_options("serve", desc, args, vm)) return 0;

  HttpServerOptions http;
  http.host = vm["host"].as<std::string>();
  http.port = vm["port"].as<int>();
  if (http.port < 0 || http.port > 65535)
    throw ConfigError("--port must be in [0, 65535], got " + std::to_string(http.port));
  const int64_t max_body = vm["max-body-bytes"].as<int64_t>();
  if (max_body < 1) throw ConfigError("--max-body-bytes must be >= 1, got " + std::to_string(max_body));
  http.max_body_bytes = static_cast<size_t>(max_body);
  http.threads = vm["http-threads"].as<int>();
  if (http.threads < 1 || http.threads > 4096)
    throw ConfigError("--http-threads must be in [1, 4096], got " + std::to_string(http.threads));
  const GenerationParams defaults = generation_params(vm);  // checked: InputError naming the flag

  InferenceSetup setup = setup_inference(vm, "serve");
  http.model_name = std::filesystem::path(setup.rc.source).stem().string();
  if (http.model_name.empty()) http.model_name = "glm";
  http.max_prompt_tokens = setup.rc.model.max_sequence_length;

  // Every rank ignores the stop signals' default action (Slurm and mpiexec signal every rank);
  // only rank 0's decide when the engine stops.
  install_stop_handlers();
  struct sigaction sa {};
  sa.sa_handler = on_interrupt;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);

  if (!setup.rt.is_world_root()) {
    setup.engine->serve(nullptr);
    return 0;
  }
  RequestQueue queue;
  HttpServer server(http, queue, setup.tokenizer.get(), setup.rc.model, defaults);
  const int port = server.start();
  std::fprintf(stderr, "glmrt serve: listening on http://%s:%d\n", http.host.c_str(), port);
  std::fflush(stderr);
  std::vector<int64_t> answered;
  {
    SignalWatcher watcher(queue);
    answered = setup.engine->serve(&queue);
  }
  server.stop();
  if (answered.size() > 1) {
    std::string counts;
    for (size_t d = 0; d < answered.size(); ++d)
      counts += (d ? ", " : "") + std::to_string(answered[d]);
    std::fprintf(stderr, "glmrt serve: queries answered per replica: %s\n", counts.c_str());
  }
  std::fprintf(stderr, "glmrt serve: stopped\n");
  return 0;
}

}  // namespace glmrt
