#include "kernels/tensor.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#ifdef __linux__
#include <sys/mman.h>
#endif
#include <type_traits>

#ifdef GLMRT_WITH_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

namespace glmrt {

namespace {
std::atomic<size_t> g_allocated[2];  // process-wide counters: per device kind
std::atomic<size_t> g_peak[2];

void count_allocation(std::atomic<size_t>& counter, std::atomic<size_t>& peak, size_t bytes) {
  const size_t now = counter += bytes;
  size_t seen = peak.load();
  while (now > seen && !peak.compare_exchange_weak(seen, now)) {
  }
}

#ifndef GLMRT_WITH_CUDA
[[noreturn]] void no_cuda() {
  throw Error("this glmrt was built without the CUDA backend (configure with nvcc on PATH)");
}
#endif
}  // namespace

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

size_t allocated_bytes(Device::Kind kind) { return g_allocated[static_cast<int>(kind)].load(); }
size_t peak_allocated_bytes(Device::Kind kind) { return g_peak[static_cast<int>(kind)].load(); }
void reset_peak_allocated_bytes(Device::Kind kind) {
  g_peak[static_cast<int>(kind)] = g_allocated[static_cast<int>(kind)].load();
}

Storage::Storage(void* ptr, size_t bytes, Device device, std::function<void(void*)> deleter)
    : ptr_(ptr), bytes_(bytes), device_(device), deleter_(std::move(deleter)) {}

Storage::~Storage() {
  if (deleter_) deleter_(ptr_);
}

namespace {

// Host buffers of at least this size (weights, KV caches, activations of long rows) are placed
// on 2 MiB boundaries, whole 2 MiB pages, with the kernel asked for transparent huge pages
// (MADV_HUGEPAGE: Debian's default THP mode is `madvise`). A decoding step streams every weight
// once; on 4 KiB pages each 4 KiB costs a TLB miss and a restart of the hardware prefetcher, and
// the stream ran ~25% below the rate of the same read on huge pages (bench/RESULTS.md).
// GLMRT_HUGE_PAGES=0 keeps every buffer on ordinary pages (for comparisons).
constexpr size_t kHugePage = size_t{2} << 20, kHugeMin = size_t{8} << 20;

bool huge_pages_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("GLMRT_HUGE_PAGES");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return enabled;
}

void* host_allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
#ifdef __linux__
  if (bytes >= kHugeMin && huge_pages_enabled()) {
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* p = std::aligned_alloc(kHugePage, rounded);
    if (p) ::madvise(p, rounded, MADV_HUGEPAGE);  // a refusal leaves ordinary pages: fine
    return p;
  }
#endif
  return std::aligned_alloc(64, (bytes + 63) / 64 * 64);
}

}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  auto& counter = g_allocated[static_cast<int>(device.kind)];
  auto& peak = g_peak[static_cast<int>(device.kind)];
  if (device.is_cpu()) {
    void* p = host_allocate(bytes);
    if (bytes && !p) throw Error(detail::concat("out of host memory allocating ", bytes, " bytes"));
    count_allocation(counter, peak, bytes);
    return std::make_shared<Storage>(p, bytes, device, [bytes, &counter](void* q) {
      std::free(q);
      counter -= bytes;
    });
  }
#ifdef GLMRT_WITH_CUDA
  void* p = bytes ? cuda::device_malloc(bytes, device.index) : nullptr;
  count_allocation(counter, peak, bytes);
  return std::make_shared<Storage>(p, bytes, device, [bytes, &counter, index = device.index](void* q) {
    if (q) cuda::device_free(q, index);
    counter -= bytes;
  });
#else
  no_cuda();
#endif
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device) {
  for (int64_t d : shape)
    GLMRT_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.storage_ = Storage::allocate(t.nbytes(), device);
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device) {
  Tensor t = empty(std::move(shape), dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::wrap(void* data, Shape shape, DType dtype, std::shared_ptr<void> owner) {
  Tensor t;
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(data, t.nbytes(), Device::cpu(),
                                         [owner](void*) mutable { owner.reset(); });
  return t;
}

Tensor Tensor::from_floats(const std::vector<float>& values, Shape shape, DType dtype) {
  GLMRT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_floats: ",
              values.size(), " values for shape ", shape_str(shape));
  Tensor f = empty(shape, DType::F32);
  std::memcpy(f.data(), values.data(), values.size() * sizeof(float));
  return dtype == DType::F32 ? f : f.to(dtype);
}

Tensor Tensor::from_ints(const std::vector<int32_t>& values, Shape shape) {
  GLMRT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_ints: ",
              values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(std::move(shape), DType::I32);
  std::memcpy(t.data(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  GLMRT_CHECK(j >= 0 && j < n, "dim ", i, " of a ", n, "-d tensor");
  return shape_[j];
}

void* Tensor::data() const {
  GLMRT_CHECK(storage_ != nullptr, "data() of an undefined tensor");
  return static_cast<char*>(storage_->ptr()) + offset_;
}

Tensor Tensor::view(Shape shape) const {
  GLMRT_CHECK(shape_numel(shape) == numel(), "cannot view ", str(), " as ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  GLMRT_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "rows [", begin, ", ",
              end, ") of ", str());
  Tensor t = *this;
  int64_t row = shape_[0] ? numel() / shape_[0] : 0;
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

namespace {
template <class Src, class Dst>
Dst convert_one(Src v) {
  if constexpr (std::is_same_v<Src, Dst>) {
    return v;
  } else {
    double x;
    if constexpr (std::is_same_v<Src, f16>) x = f16_to_float(v);
    else if constexpr (std::is_same_v<Src, bf16>) x = bf16_to_float(v);
    else x = static_cast<double>(v);
    if constexpr (std::is_same_v<Dst, f16>) return float_to_f16(static_cast<float>(x));
    else if constexpr (std::is_same_v<Dst, bf16>) return float_to_bf16(static_cast<float>(x));
    else return static_cast<Dst>(x);
  }
}

template <class Src, class Dst>
void convert_all(const void* src, void* dst, int64_t n) {
  auto s = static_cast<const Src*>(src);
  auto d = static_cast<Dst*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = convert_one<Src, Dst>(s[i]);
}

template <class Src>
void convert_from(DType to, const void* src, void* dst, int64_t n) {
  switch (to) {
    case DType::F32: return convert_all<Src, float>(src, dst, n);
    case DType::F64: return convert_all<Src, double>(src, dst, n);
    case DType::F16: return convert_all<Src, f16>(src, dst, n);
    case DType::BF16: return convert_all<Src, bf16>(src, dst, n);
    case DType::I32: return convert_all<Src, int32_t>(src, dst, n);
    case DType::I64: return convert_all<Src, int64_t>(src, dst, n);
    case DType::I8: return convert_all<Src, int8_t>(src, dst, n);
  }
}
}  // namespace

void convert_host(DType from, const void* src, DType to, void* dst, int64_t n) {
  switch (from) {
    case DType::F32: return convert_from<float>(to, src, dst, n);
    case DType::F64: return convert_from<double>(to, src, dst, n);
    case DType::F16: return convert_from<f16>(to, src, dst, n);
    case DType::BF16: return convert_from<bf16>(to, src, dst, n);
    case DType::I32: return convert_from<int32_t>(to, src, dst, n);
    case DType::I64: return convert_from<int64_t>(to, src, dst, n);
    case DType::I8: return convert_from<int8_t>(to, src, dst, n);
  }
}

Tensor Tensor::to(DType dtype) const {
  GLMRT_CHECK(device().is_cpu(), "Tensor::to(DType) is host-only; use convert() on ", str());
  if (dtype == dtype_) return clone();
  Tensor t = empty(shape_, dtype);
  convert_host(dtype_, data(), dtype, t.data(), numel());
  return t;
}

Tensor Tensor::clone() const { return to(device()); }

void Tensor::copy_from(const Tensor& src) {
  GLMRT_CHECK(src.dtype() == dtype_ && src.numel() == numel(), "copy_from ", src.str(), " into ",
              str());
  if (nbytes() == 0) return;
  if (device().is_cpu() && src.device().is_cpu()) {
    std::memmove(data(), src.data(), nbytes());
    return;
  }
#ifdef GLMRT_WITH_CUDA
  cuda::copy_bytes(data(), device(), src.data(), src.device(), nbytes());
#else
  no_cuda();
#endif
}

void Tensor::zero_() {
  if (nbytes() == 0) return;
  if (device().is_cpu()) {
    std::memset(data(), 0, nbytes());
    return;
  }
#ifdef GLMRT_WITH_CUDA
  cuda::zero_bytes(data(), nbytes(), device().index);
#else
  no_cuda();
#endif
}

double Tensor::item(int64_t i) const {
  GLMRT_CHECK(device().is_cpu() && i >= 0 && i < numel(), "item(", i, ") of ", str());
  double v;
  convert_host(dtype_, static_cast<const char*>(data()) + i * dtype_size(dtype_), DType::F64, &v, 1);
  return v;
}

std::string Tensor::str() const {
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " on " + device().str();
}

void check_shape(const Tensor& t, const Shape& shape, const char* what) {
  GLMRT_CHECK(t.defined() && t.shape() == shape, what, ": expected shape ", shape_str(shape),
              ", got ", t.defined() ? t.str() : std::string("undefined"));
}

void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  GLMRT_CHECK(a.device() == b.device(), what, ": tensors on ", a.device().str(), " and ",
              b.device().str());
}

}  // namespace glmrt
