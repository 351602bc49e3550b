// safetensors files: 8-byte little-endian header length N, N bytes of JSON header
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian data. Read through a memory map (tensors are zero-copy views);
// written atomically (temporary file, fsync, rename), so a reader never sees half a file.
#pragma once

#include <map>
#include <set>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/tensor.h"

namespace glmrt {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  size_t begin, end;  // byte offsets within the data section
};

class SafetensorsReader {
 public:
  // Maps `path` and validates the header against the file size; throws CheckpointError naming the
  // file and the problem (truncated, malformed JSON, unknown dtype, size mismatch, overlap).
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const SafetensorsEntry* find(const std::string& name) const;
  // A CPU tensor viewing the mapped bytes (copied when misaligned); throws if absent.
  Tensor tensor(const std::string& name) const;
  // Drops the tensor's pages from this process's resident memory (they stay in the page cache; a
  // view still held reads them back from the file). Streaming readers call it once a tensor is
  // consumed, so that reading a whole model through the map keeps about one tensor resident.
  void release(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::shared_ptr<void> map_;  // munmaps when the last view is gone
  const char* data_ = nullptr;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes `tensors` (any device; copied to the host) to `path` atomically: `path`.tmp.<pid> is
// written, fsynced and renamed over `path`; on failure nothing is left at `path`.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a safetensors file one tensor at a time, so a file can be produced from data that never
// sits in memory at once (resharding 260 GB of weights). The header is fixed up front from the
// entries' names, dtypes and shapes; names() gives the file order, the fastest order for
// write() (sequential), but tensors may be written in any order, each exactly once.
// Atomic like write_safetensors: nothing appears at `path` unless finish() succeeds.
class SafetensorsStreamWriter {
 public:
  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
  };
  SafetensorsStreamWriter(const std::string& path, std::vector<Entry> entries,
                          const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsStreamWriter();
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;
  const std::vector<std::string>& names() const { return order_; }
  void write(const std::string& name, const Tensor& t);  // any name not yet written
  void finish();

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  std::vector<std::string> order_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, size_t> offsets_;  // byte offset of each tensor's data in the file
  std::set<std::string> written_;
  bool finished_ = false;
};

// fsyncs the directory holding `path` (makes a rename durable).
void fsync_directory_of(const std::string& path);

}  // namespace glmrt
