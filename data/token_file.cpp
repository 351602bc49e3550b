#include "data/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <limits>

#include "checkpoint/safetensors.h"  // fsync_directory_of
#include "kernels/error.h"

namespace glmrt {

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
constexpr uint64_t kVersion = 1;
constexpr uint8_t kInt32Code = 4, kUint16Code = 8;
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;
constexpr size_t kFlushBytes = 8u << 20;

template <class T>
T load(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
  return v;
}

void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw InputError(path + ": write failed: " + std::strerror(errno));
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

void sync_and_close(int fd, const std::string& path) {
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    throw InputError(path + ": fsync failed: " + std::strerror(err));
  }
  if (::close(fd) != 0) throw InputError(path + ": close failed: " + std::strerror(errno));
}

// Maps `path` read-only; an empty file maps to nullptr.
std::shared_ptr<const char> map_file(const std::string& path, size_t& size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw InputError(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw InputError(path + ": not a regular file");
  }
  size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return nullptr;
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) throw InputError(path + ": cannot map: " + std::strerror(err));
  const size_t n = size;
  return std::shared_ptr<const char>(static_cast<const char*>(p),
                                     [n](const char* q) { ::munmap(const_cast<char*>(q), n); });
}

}  // namespace

// ---- Writer ------------------------------------------------------------------------------------

TokenFileWriter::TokenFileWriter(const std::string& prefix)
    : prefix_(prefix), bin_tmp_(prefix + ".bin.tmp"), idx_tmp_(prefix + ".idx.tmp") {
  bin_fd_ = ::open(bin_tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (bin_fd_ < 0) throw InputError(prefix + ".bin: cannot create: " + std::strerror(errno));
  buffer_.reserve(kFlushBytes + 4096);
}

TokenFileWriter::~TokenFileWriter() {
  if (!finished_) discard();
}

void TokenFileWriter::discard() noexcept {
  if (bin_fd_ >= 0) ::close(bin_fd_);
  bin_fd_ = -1;
  ::unlink(bin_tmp_.c_str());
  ::unlink(idx_tmp_.c_str());
}

void TokenFileWriter::flush() {
  if (buffer_.empty()) return;
  write_all(bin_fd_, buffer_.data(), buffer_.size(), bin_tmp_);
  buffer_.clear();
}

void TokenFileWriter::add_document(std::span<const int32_t> ids) {
  if (finished_ || bin_fd_ < 0) throw InternalError(prefix_ + ": add_document after finish()");
  if (ids.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    throw InputError(prefix_ + ": a document of " + std::to_string(ids.size()) +
                     " tokens exceeds the format's limit of 2^31 - 1 tokens per document");
  for (const int32_t id : ids)
    if (id < 0) throw InputError(prefix_ + ": negative token id " + std::to_string(id));
  const char* p = reinterpret_cast<const char*>(ids.data());
  const size_t bytes = ids.size_bytes();
  if (buffer_.size() + bytes > kFlushBytes) flush();
  if (bytes > kFlushBytes) write_all(bin_fd_, p, bytes, bin_tmp_);
  else buffer_.insert(buffer_.end(), p, p + bytes);
  sizes_.push_back(static_cast<int32_t>(ids.size()));
  tokens_ += static_cast<int64_t>(ids.size());
}

void TokenFileWriter::finish() {
  if (finished_) return;
  flush();
  const int bin_fd = bin_fd_;
  bin_fd_ = -1;
  sync_and_close(bin_fd, bin_tmp_);

  const uint64_t n = sizes_.size(), doc_entries = n + 1;
  const int fd = ::open(idx_tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw InputError(prefix_ + ".idx: cannot create: " + std::strerror(errno));
  try {
    // Streamed in pieces: the index of a large corpus is itself large (12 bytes per document).
    std::vector<char> out;
    out.reserve(kFlushBytes + (4u << 20));
    auto put = [&](const void* src, size_t bytes) {
      const char* c = static_cast<const char*>(src);
      out.insert(out.end(), c, c + bytes);
      if (out.size() >= kFlushBytes) {
        write_all(fd, out.data(), out.size(), idx_tmp_);
        out.clear();
      }
    };
    put(kMagic, 9);
    put(&kVersion, 8);
    put(&kInt32Code, 1);
    put(&n, 8);
    put(&doc_entries, 8);
    for (uint64_t i = 0; i < n; i += 1u << 20)
      put(sizes_.data() + i, std::min<uint64_t>(n - i, 1u << 20) * 4);
    int64_t pointer = 0;
    for (const int32_t size : sizes_) {
      put(&pointer, 8);
      pointer += int64_t(size) * 4;
    }
    for (int64_t d = 0; d <= static_cast<int64_t>(n); ++d) put(&d, 8);
    write_all(fd, out.data(), out.size(), idx_tmp_);
  } catch (...) {
    ::close(fd);
    throw;
  }
  sync_and_close(fd, idx_tmp_);

  const std::string bin = prefix_ + ".bin", index = prefix_ + ".idx";
  if (::rename(bin_tmp_.c_str(), bin.c_str()) != 0)
    throw InputError(bin + ": cannot rename into place: " + std::strerror(errno));
  if (::rename(idx_tmp_.c_str(), index.c_str()) != 0) {
    const int err = errno;
    ::unlink(bin.c_str());  // a data file without its index is useless
    throw InputError(index + ": cannot rename into place: " + std::strerror(err));
  }
  finished_ = true;
  fsync_directory_of(index);
}

// ---- Reader ------------------------------------------------------------------------------------

TokenFile::TokenFile(const std::string& prefix) : prefix_(prefix) {
  const std::string idx_path = prefix + ".idx", bin_path = prefix + ".bin";
  size_t idx_size = 0, bin_size = 0;
  idx_ = map_file(idx_path, idx_size);
  auto bad = [&](const std::string& why) { throw InputError(idx_path + ": " + why); };
  if (idx_size < kHeaderBytes)
    bad("truncated: " + std::to_string(idx_size) + " bytes, shorter than the " +
        std::to_string(kHeaderBytes) + "-byte header");
  const char* h = idx_.get();
  if (std::memcmp(h, kMagic, 9) != 0)
    bad("not a Megatron indexed-dataset index (bad magic; expected \"MMIDIDX\\0\\0\")");
  if (const uint64_t v = load<uint64_t>(h + 9); v != kVersion)
    bad("unsupported version " + std::to_string(v) + " (expected 1)");
  const uint8_t code = load<uint8_t>(h + 17);
  if (code == kInt32Code) elem_ = 4;
  else if (code == kUint16Code) elem_ = 2;
  else bad("unsupported dtype code " + std::to_string(code) + " (int32 = 4 or uint16 = 8)");
  const uint64_t n = load<uint64_t>(h + 18), m = load<uint64_t>(h + 26);
  // Each count is bounded by the file size before the expected length is computed (no overflow).
  if (n > idx_size / 12 || m > idx_size / 8 ||
      kHeaderBytes + n * 12 + m * 8 != idx_size) {
    bad("length " + std::to_string(idx_size) + " bytes does not match its header (" +
        std::to_string(n) + " sequences, " + std::to_string(m) +
        " document-index entries): truncated or corrupt");
  }
  sizes_ = h + kHeaderBytes;
  pointers_ = sizes_ + n * 4;
  const char* doc_idx = pointers_ + n * 8;
  num_docs_ = static_cast<int64_t>(n);

  bin_ = map_file(bin_path, bin_size);
  int64_t expected = 0;
  for (uint64_t i = 0; i < n; ++i) {
    const int32_t s = load<int32_t>(sizes_ + i * 4);
    if (s < 0) bad("sequence " + std::to_string(i) + " has negative size " + std::to_string(s));
    const int64_t p = load<int64_t>(pointers_ + i * 8);
    if (p != expected)
      bad("sequence " + std::to_string(i) + " starts at byte " + std::to_string(p) + ", expected " +
          std::to_string(expected) + " (pointers must be contiguous and increasing)");
    expected += int64_t(s) * elem_;
  }
  if (static_cast<uint64_t>(expected) != bin_size)
    throw InputError(bin_path + ": " + std::to_string(bin_size) + " bytes, but " + idx_path +
                     " describes " + std::to_string(expected) + " (truncated or mismatched pair)");
  num_tokens_ = expected / elem_;
  if (m < 1) bad("empty document index (needs at least the entry 0)");
  int64_t prev = 0;
  for (uint64_t j = 0; j < m; ++j) {
    const int64_t d = load<int64_t>(doc_idx + j * 8);
    if ((j == 0 && d != 0) || d < prev || d > static_cast<int64_t>(n))
      bad("document index entry " + std::to_string(j) + " = " + std::to_string(d) +
          " is out of order or outside [0, " + std::to_string(n) + "]");
    prev = d;
  }
  if (prev != static_cast<int64_t>(n))
    bad("document index ends at " + std::to_string(prev) + ", expected " + std::to_string(n));
}

int64_t TokenFile::document_length(int64_t i) const {
  if (i < 0 || i >= num_docs_)
    throw InputError(prefix_ + ": document " + std::to_string(i) + " outside [0, " +
                     std::to_string(num_docs_) + ")");
  return load<int32_t>(sizes_ + i * 4);
}

int64_t TokenFile::document_offset(int64_t i) const {
  document_length(i);  // range check
  return load<int64_t>(pointers_ + i * 8) / elem_;
}

std::vector<int32_t> TokenFile::document(int64_t i) const {
  std::vector<int32_t> out(document_length(i));
  read(document_offset(i), static_cast<int64_t>(out.size()), out.data());
  return out;
}

void TokenFile::read(int64_t token_offset, int64_t count, int32_t* out) const {
  if (token_offset < 0 || count < 0 || token_offset > num_tokens_ - count)
    throw InputError(prefix_ + ": tokens [" + std::to_string(token_offset) + ", " +
                     std::to_string(token_offset + count) + ") outside the " +
                     std::to_string(num_tokens_) + " tokens of the file");
  if (count == 0) return;
  if (elem_ == 4) {
    std::memcpy(out, bin_.get() + token_offset * 4, static_cast<size_t>(count) * 4);
  } else {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(bin_.get()) + token_offset;
    for (int64_t k = 0; k < count; ++k) out[k] = src[k];
  }
}

std::span<const int32_t> TokenFile::int32_tokens() const {
  if (elem_ != 4 || !bin_) return {};
  return {reinterpret_cast<const int32_t*>(bin_.get()), static_cast<size_t>(num_tokens_)};
}

}  // namespace glmrt
