// Token files: `PREFIX.bin` + `PREFIX.idx` in Megatron-LM's memory-mapped indexed dataset format
// (MMapIndexedDataset), so data preprocessed for Megatron is read here and the reverse.
//
// PREFIX.idx, little-endian, packed:
//   magic "MMIDIDX\0\0" (9 bytes), version uint64 = 1, dtype code uint8 (4 = int32, 8 = uint16),
//   number of sequences N uint64, number of document-index entries M uint64,
//   sizes int32[N] (tokens per sequence), pointers int64[N] (byte offset of each sequence in
//   PREFIX.bin), doc_idx int64[M] (sequence index where each document starts, last entry N).
// PREFIX.bin: the token ids of all sequences back to back.
//
// glmrt writes int32 ids, one sequence per document (each ending with `eod`), doc_idx = 0..N. It
// reads int32 and uint16 files; "document" below means a sequence of the file. The reader
// requires the sequences to be stored contiguously in order (what Megatron's builder writes), so
// the token stream — the concatenation of all documents — is the data of PREFIX.bin.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace glmrt {

// Writes a token file pair atomically: the data goes to PREFIX.bin.tmp and PREFIX.idx.tmp, and
// finish() fsyncs both and renames them into place (the index last). Destroyed without finish()
// (an error on the way), it removes the temporaries and leaves any existing PREFIX.* untouched.
class TokenFileWriter {
 public:
  explicit TokenFileWriter(const std::string& prefix);
  ~TokenFileWriter();
  TokenFileWriter(const TokenFileWriter&) = delete;
  TokenFileWriter& operator=(const TokenFileWriter&) = delete;

  // Appends one document (its ids as given; ids must be ≥ 0).
  void add_document(std::span<const int32_t> ids);
  void finish();

  int64_t num_documents() const { return static_cast<int64_t>(sizes_.size()); }
  int64_t num_tokens() const { return tokens_; }
  const std::string& prefix() const { return prefix_; }

 private:
  void flush();
  void discard() noexcept;

  std::string prefix_, bin_tmp_, idx_tmp_;
  int bin_fd_ = -1;
  std::vector<char> buffer_;
  std::vector<int32_t> sizes_;
  int64_t tokens_ = 0;
  bool finished_ = false;
};

// A token file pair, memory-mapped and validated on open (magic, version, dtype, the index length
// against its counts, sizes, contiguous pointers, doc_idx, PREFIX.bin's length). Problems throw
// InputError naming the file and what is wrong. Copies share the mappings.
class TokenFile {
 public:
  explicit TokenFile(const std::string& prefix);

  const std::string& prefix() const { return prefix_; }
  int64_t num_documents() const { return num_docs_; }
  int64_t num_tokens() const { return num_tokens_; }
  int dtype_size() const { return elem_; }  // bytes per token id: 4 (int32) or 2 (uint16)

  int64_t document_length(int64_t i) const;
  int64_t document_offset(int64_t i) const;  // its first token's offset in the token stream
  std::vector<int32_t> document(int64_t i) const;
  // Copies tokens [token_offset, token_offset + count) of the token stream to `out`.
  void read(int64_t token_offset, int64_t count, int32_t* out) const;
  // The token stream itself when the file stores int32 ids; empty for uint16 files.
  std::span<const int32_t> int32_tokens() const;

 private:
  std::string prefix_;
  std::shared_ptr<const char> idx_, bin_;
  const char* sizes_ = nullptr;     // int32[N], unaligned in the index
  const char* pointers_ = nullptr;  // int64[N], unaligned in the index
  int64_t num_docs_ = 0, num_tokens_ = 0;
  int elem_ = 4;
};

}  // namespace glmrt
