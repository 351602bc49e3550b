#include "checkpoint/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace glmrt {

namespace {
constexpr uint64_t kMaxHeader = 100ull << 20;  // the reference reader's limit

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw CheckpointError(path + ": " + why);
}
}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(path, "truncated: " + std::to_string(size) + " bytes, no header");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail(path, std::string("cannot map: ") + std::strerror(errno));
  map_ = std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); });
  const char* bytes = static_cast<const char*>(p);

  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);  // little-endian hosts only (x86-64, aarch64)
  if (header_len > kMaxHeader || 8 + header_len > size)
    fail(path, "header length " + std::to_string(header_len) + " does not fit a file of " +
                   std::to_string(size) + " bytes (truncated or not safetensors)");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes + 8, bytes + 8 + header_len);
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, std::string("malformed JSON header: ") + e.what());
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");
  data_ = bytes + 8 + header_len;
  const size_t data_size = size - 8 - header_len;

  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) fail(path, "__metadata__ is not an object");
      for (const auto& [k, v] : info.items()) {
        if (!v.is_string()) fail(path, "__metadata__." + k + " is not a string");
        metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor " + name;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets"))
      fail(path, where + ": needs dtype, shape and data_offsets");
    SafetensorsEntry e;
    e.name = name;
    auto dt = info["dtype"].is_string() ? dtype_from_name(info["dtype"].get<std::string>())
                                        : std::nullopt;
    if (!dt) fail(path, where + ": unsupported dtype " + info["dtype"].dump());
    e.dtype = *dt;
    if (!info["shape"].is_array()) fail(path, where + ": shape is not a list");
    for (const auto& d : info["shape"]) {
      if (!d.is_number_unsigned()) fail(path, where + ": bad dimension " + d.dump());
      e.shape.push_back(d.get<int64_t>());
    }
    const auto& off = info["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      fail(path, where + ": data_offsets must be [begin, end]");
    e.begin = off[0].get<size_t>();
    e.end = off[1].get<size_t>();
    const size_t want = static_cast<size_t>(shape_numel(e.shape)) * dtype_size(e.dtype);
    if (e.end < e.begin || e.end - e.begin != want)
      fail(path, where + ": data_offsets [" + std::to_string(e.begin) + ", " +
                     std::to_string(e.end) + ") hold " + std::to_string(e.end - e.begin) +
                     " bytes, shape " + shape_str(e.shape) + " of " +
                     std::string(dtype_name(e.dtype)) + " needs " + std::to_string(want));
    if (e.end > data_size)
      fail(path, where + ": data ends at byte " + std::to_string(e.end) + " of a " +
                     std::to_string(data_size) + "-byte data section (truncated file)");
    entries_.push_back(std::move(e));
  }
  // Tensors must not overlap (the reference reader also forbids holes; we only need no overlap).
  std::vector<const SafetensorsEntry*> order;
  for (const auto& e : entries_) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](auto a, auto b) { return a->begin < b->begin; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i]->begin < order[i - 1]->end)
      fail(path, "tensors " + order[i - 1]->name + " and " + order[i]->name + " overlap");
  for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].name] = i;
}

const SafetensorsEntry* SafetensorsReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

Tensor SafetensorsReader::tensor(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail(path_, "no tensor named " + name);
  const char* src = data_ + e->begin;
  if (reinterpret_cast<uintptr_t>(src) % dtype_size(e->dtype) != 0) {
    Tensor t = Tensor::empty(e->shape, e->dtype);
    std::memcpy(t.data(), src, e->end - e->begin);
    return t;
  }
  return Tensor::wrap(const_cast<char*>(src), e->shape, e->dtype, map_);
}

void SafetensorsReader::release(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e || e->end == e->begin) return;
  // Whole pages inside the tensor only: a page shared with a neighbour stays.
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data_ + e->begin) + page - 1) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(data_ + e->end) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void fsync_directory_of(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

namespace {
void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw CheckpointError(path + ": write failed: " + std::strerror(errno));
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

void pwrite_all(int fd, const void* p, size_t n, size_t offset, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, c, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw CheckpointError(path + ": write failed: " + std::strerror(errno));
    }
    c += w;
    offset += static_cast<size_t>(w);
    n -= static_cast<size_t>(w);
  }
}
}  // namespace

namespace {
// Order by alignment (larger element sizes first), then name, so every tensor is naturally
// aligned in the file without holes (what the reference writer does). Returns the header bytes
// (length prefix included) and fills `order` with the entries' indices in file order.
std::string build_header(const std::vector<SafetensorsStreamWriter::Entry>& entries,
                         const std::map<std::string, std::string>& metadata,
                         std::vector<size_t>& order) {
  order.resize(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const size_t sa = dtype_size(entries[a].dtype), sb = dtype_size(entries[b].dtype);
    return sa != sb ? sa > sb : entries[a].name < entries[b].name;
  });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  for (size_t i : order) {
    const auto& e = entries[i];
    if (header.contains(e.name)) throw InternalError("safetensors: duplicate tensor " + e.name);
    const size_t bytes = static_cast<size_t>(shape_numel(e.shape)) * dtype_size(e.dtype);
    header[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - (8 + h.size()) % 8) % 8, ' ');
  const uint64_t header_len = h.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &header_len, 8);
  return out + h;
}
}  // namespace

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsStreamWriter::Entry> entries;
  for (const auto& [name, t] : tensors) entries.push_back({name, t.dtype(), t.shape()});
  std::vector<size_t> order;
  const std::string h = build_header(entries, metadata, order);

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw CheckpointError(path + ": cannot create: " + std::strerror(errno));
  try {
    write_all(fd, h.data(), h.size(), path);
    for (size_t i : order) {
      const Tensor& t = tensors[i].second;
      const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
      if (host.nbytes()) write_all(fd, host.data(), host.nbytes(), path);
    }
    if (::fsync(fd) != 0) throw CheckpointError(path + ": fsync failed: " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw CheckpointError(path + ": cannot rename into place: " + std::strerror(err));
  }
  fsync_directory_of(path);
}

}  // namespace glmrt

namespace glmrt {

SafetensorsStreamWriter::SafetensorsStreamWriter(const std::string& path, std::vector<Entry> entries,
                                                 const std::map<std::string, std::string>& metadata)
    : path_(path), tmp_(path + ".tmp." + std::to_string(::getpid())) {
  std::vector<size_t> order;
  const std::string h = build_header(entries, metadata, order);
  size_t offset = h.size();
  for (size_t i : order) {
    order_.push_back(entries[i].name);
    offsets_[entries[i].name] = offset;
    offset += static_cast<size_t>(shape_numel(entries[i].shape)) * dtype_size(entries[i].dtype);
  }
  for (Entry& e : entries) entries_[e.name] = e;
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw CheckpointError(path + ": cannot create: " + std::strerror(errno));
  write_all(fd_, h.data(), h.size(), path);
}

SafetensorsStreamWriter::~SafetensorsStreamWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_.c_str());
}

void SafetensorsStreamWriter::write(const std::string& name, const Tensor& t) {
  const auto e = entries_.find(name);
  GLMRT_CHECK(e != entries_.end(), "SafetensorsStreamWriter: ", name, " is not in the header of ", path_);
  GLMRT_CHECK(written_.insert(name).second, "SafetensorsStreamWriter: ", name, " written twice");
  GLMRT_CHECK(t.dtype() == e->second.dtype && t.shape() == e->second.shape, "SafetensorsStreamWriter: ", name,
              " is ", t.str(), ", the header says ", dtype_name(e->second.dtype), shape_str(e->second.shape));
  const Tensor host = t.device().is_cpu() ? t : t.to(Device::cpu());
  if (host.nbytes()) pwrite_all(fd_, host.data(), host.nbytes(), offsets_.at(name), path_);
}

void SafetensorsStreamWriter::finish() {
  GLMRT_CHECK(written_.size() == order_.size(), "SafetensorsStreamWriter: ", order_.size() - written_.size(),
              " tensor(s) of ", path_, " not written");
  if (::fsync(fd_) != 0) throw CheckpointError(path_ + ": fsync failed: " + std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    throw CheckpointError(path_ + ": cannot rename into place: " + std::strerror(errno));
  finished_ = true;
  fsync_directory_of(path_);
}

}  // namespace glmrt
