// glmrt train: training on any 3D layout, from given full weights (fine-tuning) or a seeded init.
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "checkpoint/full_weights.h"
#include "checkpoint/gather.h"
#include "launcher/data_setup.h"
#include "launcher/options.h"
#include "launcher/parallel_setup.h"
#include "launcher/run_config.h"
#include "model/init.h"
#include "launcher/stop_signal.h"
#include "train/checkpointing.h"
#include "train/memory_account.h"
#include "train/training_log.h"
#include "train/trainer.h"

namespace glmrt {

namespace {
DType compute_dtype(Precision p) {
  switch (p) {
    case Precision::FP32: return DType::F32;
    case Precision::BF16: return DType::BF16;
    case Precision::FP16: return DType::F16;
  }
  return DType::F32;
}
}  // namespace

int run_train(const Args& args) {
  po::options_description desc("glmrt train");
  desc.add_options()
    ("config", po::value<std::string>()->required(), "run config (YAML) with train/optimizer/data")
    ("init-weights", po::value<std::string>(), "start from these full weights (else a seeded init)")
    ("output-weights", po::value<std::string>(), "write the trained full weights here at the end")
    ("load", po::value<std::string>(), "resume from the latest checkpoint in this folder "
                                       "(overrides checkpoint.load; any layout)");
  add_compute_options(desc);
  add_parallel_options(desc);
  add_set_option(desc);
  po::variables_map vm;
  if (!parse_options("train", desc, args, vm)) return 0;
  const ComputeOptions compute = compute_options(vm);
  RunConfig rc = load_run_config(vm["config"].as<std::string>(), config_overrides(vm));
  ParallelRuntime rt = setup_parallel(rc, vm, compute.device);
  const Layout& layout = rt.groups->topo.layout();
  const bool root = rt.is_world_root();
  const DType dtype = compute_dtype(rc.train.precision);
  const TrainingData data = open_training_data(rc);
  const int64_t seq = data.train->seq_length();

  const int64_t pad = rc.parallel.zero ? static_cast<int64_t>(layout.data) * 64 : 1;
  GlmParams params = GlmParams::allocate(rc.model, dtype, compute.device, rt.shard, pad);
  if (vm.count("init-weights")) {
    load_full_weights(SafetensorsReader(vm["init-weights"].as<std::string>()), rc.model, params);
  } else {
    GlmParams host = GlmParams::allocate(rc.model, DType::F32, Device::cpu(), rt.shard, pad);
    init_glm_params(host, rc.model, rc.train.seed);
    Tensor dst = params.flat();
    dst.copy_from(dtype == DType::F32 ? host.flat() : host.flat().to(dtype));
  }
  GlmModel model(rc.model, std::move(params), rt.tp);
  TrainerOptions topt;
  topt.groups = rt.groups.get();
  topt.zero = rc.parallel.zero;
  topt.bucket_elements = rc.parallel.bucket_mb * (1 << 20) / 4;
  Trainer trainer(model, rc.train, rc.optimizer, data.train, topt, data.validation);
  if (root)
    std::printf("glmrt train: %s on %d rank(s), layout %s%s, %lld micro-batch(es) of %lld per "
                "data-parallel rank per step, seq %lld\n",
                precision_name(rc.train.precision), layout.world(), layout.str().c_str(),
                rc.parallel.zero ? ", ZeRO-1" : "", static_cast<long long>(trainer.micro_batches()),
                static_cast<long long>(rc.train.micro_batch_size), static_cast<long long>(seq));

  if (root) {
    // Bytes per rank from the layout alone; ranks of one pipeline stage hold the same amounts.
    std::printf("memory per rank (from the layout; 1F1B keeps min(P - stage, M) micro-batches in flight):\n"
                "  stage  layers   weights      gradients    optimizer    activations  peak\n");
    for (int stage = 0; stage < layout.pipeline; ++stage) {
      ModelShard sh = rt.shard;
      sh.first_layer = 0;
      for (int s = 0; s < stage; ++s) sh.first_layer += rt.stage_layers[static_cast<size_t>(s)];
      sh.num_layers = rt.stage_layers[static_cast<size_t>(stage)];
      sh.first_stage = stage == 0;
      sh.last_stage = stage == layout.pipeline - 1;
      const MemoryAccount a = memory_account(rc.model, rc.train, layout, sh, stage, dtype, rc.parallel.zero, seq);
      std::printf("  %5d  %6lld   %-12s %-12s %-12s %-12s %s\n", stage, static_cast<long long>(sh.num_layers),
                  format_bytes(a.weights).c_str(), format_bytes(a.gradients).c_str(),
                  format_bytes(a.optimizer).c_str(), format_bytes(a.activations).c_str(),
                  format_bytes(a.total()).c_str());
    }
  }
  if (vm.count("load")) rc.checkpoint.load = vm["load"].as<std::string>();
  bool resumed = false;
  if (!rc.checkpoint.load.empty()) {
    std::string note;
    const CheckpointManifest ckpt = find_checkpoint(rc.checkpoint.load, rc.model, &note, rt.groups->world->comm());
    if (root && !note.empty()) std::printf("glmrt train: %s\n", note.c_str());
    load_checkpoint(ckpt, model, trainer);
    resumed = true;
    if (root)
      std::printf("glmrt train: resumed from %s (iteration %lld, saved on layout %s)\n",
                  ckpt.path.c_str(), static_cast<long long>(ckpt.iteration), ckpt.layout.str().c_str());
  }
  CheckpointSaver saver(rc.checkpoint.save, rc.model, rc.train, rc.parallel.zero, rt.stage_layers,
                        rc.checkpoint.keep, rc.checkpoint.async);
  auto report = [&](const std::string& path) {
    if (root && !path.empty()) {
      std::printf("glmrt train: saved %s\n", path.c_str());
      std::fflush(stdout);
    }
  };
  // Starts a save (in the background when checkpoint.async); `wait` commits it before returning.
  auto save = [&](bool wait) {
    if (rc.checkpoint.save.empty()) return;
    report(saver.finish(*rt.groups));  // a background save still in flight commits first
    saver.save(model, trainer, *rt.groups);
    if (wait) report(saver.finish(*rt.groups));
  };
  TrainingLog log(root, rc.model, rc.train, seq, layout.world(),
                  measure_gemm_peak(model.dtype(), model.device()), resumed);
  install_stop_handlers();
  double unigram = -1, last_validation = -1;
  if (root) std::printf("data: %s\n", data.description.c_str());
  if (root && data.validation && rc.train.eval_interval > 0) {
    const auto counts = target_counts(*data.train, std::min<int64_t>(data.train->size(), 4000),
                                      rc.model.vocab_size);
    unigram = unigram_loss(counts, *data.validation, rc.train.eval_batches * rc.train.global_batch_size,
                           rc.train.micro_batch_size);
    std::printf("unigram baseline: validation loss %.4f (token frequencies of the training targets)\n",
                unigram);
  }
  // GLMRT_FAULT="rank=R,step=S[,hang]": before step S, rank R throws (or, with `hang`, stops
  // answering) — exercises the failure handling and the communication deadlines.
  int fault_rank = -1;
  long long fault_step = -1;
  bool fault_hang = false;
  if (const char* f = std::getenv("GLMRT_FAULT")) {
    std::sscanf(f, "rank=%d,step=%lld", &fault_rank, &fault_step);
    fault_hang = std::string(f).find("hang") != std::string::npos;
  }
  int64_t skipped_total = 0;
  while (trainer.iteration() < rc.train.steps) {
    const int64_t s = trainer.iteration();
    if (rt.groups->topo.rank() == fault_rank && s + 1 == fault_step) {
      if (fault_hang) std::this_thread::sleep_for(std::chrono::hours(1));
      throw Error("fault injected by GLMRT_FAULT before step " + std::to_string(s + 1));
    }
    if (const int sig = stop_signal_anywhere(*rt.groups->world)) {
      if (root)
        std::printf("glmrt train: %s received: stopping at the step boundary after iteration %lld\n",
                    sig == SIGUSR1 ? "SIGUSR1" : "SIGTERM", static_cast<long long>(s));
      if (s > 0) save(true);
      break;
    }
    if (!rc.checkpoint.save.empty()) report(saver.poll(*rt.groups));
    const StepMetrics m = trainer.step();
    skipped_total += m.skipped;
    log.step(m, skipped_total);
    if (trainer.has_validation() && rc.train.eval_interval > 0 &&
        (m.iteration % rc.train.eval_interval == 0 || m.iteration == rc.train.steps))
      log.validation(m.iteration, last_validation = trainer.evaluate());
    if (rc.checkpoint.interval > 0 && m.iteration % rc.checkpoint.interval == 0 &&
        m.iteration != rc.train.steps)
      save(false);
    if (m.iteration == rc.train.steps) save(true);
    if (rc.train.exit_interval > 0 && m.iteration % rc.train.exit_interval == 0 &&
        m.iteration != rc.train.steps) {
      save(true);
      if (root)
        std::printf("glmrt train: exit_interval reached at iteration %lld\n",
                    static_cast<long long>(m.iteration));
      break;
    }
  }
  if (!rc.checkpoint.save.empty()) report(saver.finish(*rt.groups));
  log.finish();
  if (root && last_validation >= 0 && unigram > 0)
    std::printf("glmrt train: final validation loss %.4f vs unigram baseline %.4f (%.1f%% of it)\n",
                last_validation, unigram, 100.0 * last_validation / unigram);
  if (vm.count("output-weights")) {
    const GlmParams& master = trainer.master();  // fp32 values (the model's own when fp32)
    NamedTensors full = rc.parallel.zero
                            ? gather_full_weights(model.params(), rc.model, *rt.groups, rt.stage_layers)
                            : gather_full_weights(master, rc.model, *rt.groups, rt.stage_layers);
    if (root)
      write_safetensors(vm["output-weights"].as<std::string>(), full,
                        {{"format", "pt"}, {"producer", "glmrt train"}});
  }
  return 0;
}

}  // namespace glmrt
