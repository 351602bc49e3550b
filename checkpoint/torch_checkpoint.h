// A reader of torch.save files (the zip format of torch >= 1.6), enough for the released GLM-130B
// checkpoint (GLM130B.md §7: mp_rank_XX_model_states.pt, each `{"module": state_dict}`) without
// Python or torch.
//
// The file is a zip archive of stored (uncompressed) entries: `<archive>/data.pkl` (the pickled
// object), `<archive>/data/<key>` (one raw little-endian blob per storage) and
// `<archive>/version`. The archive is memory-mapped; the zip central directory (with ZIP64
// extra fields: the released files are 30+ GB) locates every entry, and a minimal unpickler
// (protocol 2 as torch.save writes it, plus the few protocol 3/4 opcodes) rebuilds the object
// graph without executing anything: globals are recorded by name and only the reconstructors
// torch uses for tensors (`torch._utils._rebuild_tensor_v2`, `_rebuild_parameter`,
// `collections.OrderedDict`) are interpreted; anything else becomes an opaque placeholder.
// Storage blobs are not touched until tensor(name) is asked for.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kernels/tensor.h"

namespace glmrt {

// One tensor of the state dict as the pickle describes it.
struct TorchTensorInfo {
  std::string name;
  std::string storage_type;    // e.g. "HalfStorage" (of `torch.HalfStorage`)
  std::optional<DType> dtype;  // nullopt: a type glmrt has no dtype for (uint8, bool, int16, ...)
  std::string storage_key;     // the blob `<archive>/data/<key>`
  int64_t storage_numel = 0;   // elements of the whole storage
  int64_t storage_offset = 0;  // elements
  Shape shape;
  std::vector<int64_t> stride;  // elements
  bool contiguous() const;      // row-major (strides of size-1 dimensions do not matter)
};

class TorchCheckpoint {
 public:
  // Maps `path`, reads the zip directory and unpickles data.pkl. Throws CheckpointError naming
  // the file and the problem: not a zip archive (or the legacy pre-1.6 format), truncated,
  // missing data.pkl, compressed or encrypted entries, an unsupported pickle opcode (with its
  // offset), a malformed pickle, a top-level object that is not a dict.
  explicit TorchCheckpoint(const std::string& path);

  const std::string& path() const { return path_; }
  // Names of the tensors of the state dict found under the top-level key "module" (or of the
  // top-level dict itself when it has no "module"), in file order. Non-tensor values are skipped.
  std::vector<std::string> names() const;
  const TorchTensorInfo* find(const std::string& name) const;  // nullptr when absent
  const TorchTensorInfo& info(const std::string& name) const;  // throws CheckpointError if absent
  // A CPU tensor: a view of the mapped file when the tensor is contiguous and aligned, else a
  // copy (non-contiguous strides are materialised row-major). Throws CheckpointError when the
  // tensor is absent, its storage blob is missing or too small, or its type has no glmrt dtype.
  Tensor tensor(const std::string& name) const;
  // Hints that the pages of `name`'s storage are no longer needed (madvise DONTNEED): streaming
  // a 30 GB file then keeps only what is in use resident. Views stay valid (pages are re-read).
  void release(const std::string& name) const;

  // The archive's `version` record ("3" for torch 1.13), "" when absent.
  const std::string& format_version() const { return version_; }

 private:
  struct Entry {
    uint64_t offset = 0, size = 0;  // the data's place in the file
  };
  const Entry& entry(const std::string& name, const std::string& what) const;

  std::string path_;
  std::shared_ptr<void> map_;  // munmaps when the last view is gone
  const char* data_ = nullptr;
  uint64_t size_ = 0;
  std::string prefix_;  // "<archive>/"
  std::map<std::string, Entry> entries_;
  std::string version_;
  std::vector<TorchTensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

}  // namespace glmrt
