// Sharded training checkpoints. A checkpoint is a folder `iter_NNNNNNN/` holding
//   model_tp{t}_pp{p}.safetensors  the compute weights of tensor rank t, pipeline stage p, with the
//                                  released names and shard shapes (GLM130B.md §7)
//   optim_tp{t}_pp{p}.safetensors  fp32 master weights and Adam moments of the same parameters
//                                  (NAME.master, NAME.exp_avg, NAME.exp_avg_sq; ZeRO-1 shards are
//                                  gathered, so any layout can read them)
//   manifest.json                  model config, layout, step, consumed samples, LR and
//                                  loss-scale state, and the size and XXH3-64 of every file
// Commit: every writer writes into iter_NNNNNNN.tmp/ and fsyncs; after a barrier rank 0 checks
// the files, writes the manifest, renames the folder and then atomically replaces `latest` (a
// file holding the folder's name). A reader never sees half a checkpoint; a process killed
// during a save leaves the previous checkpoint and `latest` intact.
#pragma once

#include <cstdint>
#include <atomic>
#include <functional>
#include <optional>
#include <thread>
#include <string>
#include <vector>

#include <mpi.h>

#include "model/glm_model.h"
#include "parallel/process_groups.h"
#include "train/trainer.h"

namespace glmrt {

struct CheckpointManifest {
  std::string path;  // the checkpoint folder
  int64_t iteration = 0;
  Trainer::State state;
  Layout layout;
  std::vector<int64_t> stage_layers;
  bool zero = false;
  std::string precision;
  uint64_t seed = 0;
  GlmConfig model;
  // 4 or 8: a weight-only checkpoint of glmrt quantize (inference only): the four linear weights
  // of every layer are stored as I8 `NAME` values (4 bits: two per byte) with F16 `NAME_scale`
  // per-row scales of each tensor-parallel shard, and there are no optimizer files. 0: neither.
  int weight_bits = 0;
};

// Saves checkpoints, synchronously or in the background: save() snapshots this rank's part to
// host memory (collective) and writes it — in a background thread when `async` — and the commit
// (barrier, manifest, rename, `latest`) happens in poll() once every rank's writer is done, or in
// finish(). Training only waits for the snapshot.
class CheckpointSaver {
 public:
  CheckpointSaver(std::string dir, const GlmConfig& model, TrainConfig train, bool zero,
                  std::vector<int64_t> stage_layers, int64_t keep, bool async);
  ~CheckpointSaver();
  void save(GlmModel& model, Trainer& trainer, ProcessGroups& groups);
  // Collective: commits a finished background save; returns its folder, or "" when none committed.
  std::string poll(ProcessGroups& groups);
  // Collective: waits for a pending save and commits it.
  std::string finish(ProcessGroups& groups);

 private:
  std::string commit(ProcessGroups& groups);
  std::string dir_;
  TrainConfig train_;
  bool zero_;
  std::vector<int64_t> stage_layers_;
  int64_t keep_;
  bool async_;
  GlmConfig model_config_;
  Trainer::State state_;
  std::string tmp_dir_, final_dir_;
  bool pending_ = false;
  std::atomic<bool> done_{false};
  std::string error_;
  std::thread writer_;
};

// Saves this rank's part synchronously (collective over the world). `keep` > 0 removes all but the newest
// `keep` checkpoints after the commit. Returns the committed folder.
std::string save_checkpoint(const std::string& dir, const TrainConfig& train, bool zero,
                            GlmModel& model, Trainer& trainer, ProcessGroups& groups,
                            const std::vector<int64_t>& stage_layers, int64_t keep);

// The checkpoint to resume from in `dir`: the one `latest` names when it is complete and intact,
// else the newest complete one (then `note` says which was refused and why). Checks the manifest,
// the presence, size and checksum of every file, and that the model config matches `config`.
// Throws CheckpointError when no checkpoint in `dir` can be loaded. Collective over `job` when it
// is given (every rank of it calls this with the same arguments): the files' checksums are shared
// out over its ranks, each file read by one of them, and every rank returns the same checkpoint
// or throws the same error. MPI_COMM_NULL: this process checks every file.
CheckpointManifest find_checkpoint(const std::string& dir, const GlmConfig& config, std::string* note,
                                   MPI_Comm job = MPI_COMM_NULL);

// Loads a checkpoint into this rank's model and trainer, whatever the layout it was saved in:
// every tensor is rebuilt from the saved shards it overlaps (reshard_pieces) and re-split through
// the shard rules, one tensor at a time. A pre-quantized checkpoint (weight_bits) is refused: it has no optimizer state and
// no full-precision weights to train.
void load_checkpoint(const CheckpointManifest& manifest, GlmModel& model, Trainer& trainer);
// Offline resharding (`glmrt reshard`): writes `manifest`'s checkpoint into `to_dir` for
// tensor × pipeline ranks `tensor`, `pipeline` (layers per stage `stage_layers`), streaming one
// tensor at a time: peak memory is about the largest full tensor, not the model. Returns the
// committed folder.
std::string reshard_checkpoint(const CheckpointManifest& manifest, const std::string& to_dir,
                               int tensor, int pipeline, const std::vector<int64_t>& stage_layers);

// glmrt quantize from a checkpoint: `manifest`'s weights (no optimizer state) written for
// tensor × pipeline ranks with the linear weights quantized to `bits` per shard and the other
// tensors stored as `weight_dtype` (the saved dtype when none is given).
// Streams one full tensor at a time. Refuses a checkpoint that is already quantized.
std::string quantize_checkpoint(const CheckpointManifest& manifest, const std::string& to_dir, int tensor,
                                int pipeline, const std::vector<int64_t>& stage_layers,
                                const std::optional<DType>& weight_dtype, int bits);
// The dtype of a checkpoint's stored weights (its first model file's first tensor).
DType checkpoint_weight_dtype(const CheckpointManifest& manifest);

// Writes a checkpoint folder `to_dir`/iter_NNNNNNN for a layout from full tensors supplied one at
// a time: full(spec, name) returns the full (unsharded) tensor `name` of parameter `spec` —
// the weight itself (name == spec.name; stored as `weight_dtype`) or NAME.master / NAME.exp_avg /
// NAME.exp_avg_sq (stored as F32). `manifest` provides iteration, trainer state, precision, model
// and weight_bits; its layout fields are replaced. With weight_bits 4 or 8 the checkpoint holds
// weights only: each shard of a linear weight is quantized from full()'s tensor in its own dtype
// (quantize_weight, as loading with --quantization-bit-width does) and stored as I8 NAME plus
// F16 NAME_scale. Streams: one full tensor in memory at a time.
std::string write_checkpoint(const std::string& to_dir, const CheckpointManifest& manifest,
                             int tensor, int pipeline, const std::vector<int64_t>& stage_layers,
                             DType weight_dtype,
                             const std::function<Tensor(const ParamSpec&, const std::string&)>& full);

// Only the compute weights (for forward and generation). A pre-quantized checkpoint
// (manifest.weight_bits) needs parameters allocated quantized with the same bits; its linear
// weights are taken as saved (shard_quantized: any layout whose tensor-parallel degree is a
// multiple of the saved one). A full-precision checkpoint loads into quantized parameters by
// quantizing each shard as it is assigned.
void load_checkpoint_weights(const CheckpointManifest& manifest, GlmParams& params);

}  // namespace glmrt
