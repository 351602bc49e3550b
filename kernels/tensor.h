// Tensor: a contiguous, row-major n-d array of one dtype on one device, sharing its storage with
// its views (reshapes and row ranges). Strided views are deliberately not supported: every
// kernel reads dense rows, which keeps CPU and CUDA kernels simple and fast.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/error.h"

namespace glmrt {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

// A block of memory on one device. Freed by its deleter when the last tensor lets go.
class Storage {
 public:
  Storage(void* ptr, size_t bytes, Device device, std::function<void(void*)> deleter);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* ptr() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

  // Allocates `bytes` on `device` (64-byte aligned on the CPU, cudaMalloc on a GPU).
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device);

 private:
  void* ptr_;
  size_t bytes_;
  Device device_;
  std::function<void(void*)> deleter_;
};

// Bytes currently allocated through Storage::allocate, per device kind (for memory accounting).
size_t allocated_bytes(Device::Kind kind);
// The most bytes allocated at once since the last reset_peak_allocated_bytes().
size_t peak_allocated_bytes(Device::Kind kind);
void reset_peak_allocated_bytes(Device::Kind kind);

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(Shape shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(Shape shape, DType dtype, Device device = Device::cpu());
  // A tensor over memory owned by someone else (a memory map); `owner` is kept alive.
  static Tensor wrap(void* data, Shape shape, DType dtype, std::shared_ptr<void> owner);
  // A CPU tensor holding a copy of `values`, converted to `dtype` (a floating type).
  static Tensor from_floats(const std::vector<float>& values, Shape shape, DType dtype = DType::F32);
  static Tensor from_ints(const std::vector<int32_t>& values, Shape shape);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::cpu(); }
  // Number of rows when the tensor is viewed as 2-D [numel / last_dim, last_dim].
  // (The product of the leading dimensions, not numel / last_dim: a [6, 0] tensor has 6 rows.)
  int64_t rows() const {
    int64_t r = 1;
    for (int i = 0; i + 1 < ndim(); ++i) r *= shape_[i];
    return r;
  }
  int64_t cols() const { return ndim() == 0 ? 1 : dim(-1); }

  void* data() const;
  template <class T>
  T* data_as() const {
    GLMRT_CHECK(dtype_of<T>() == dtype_, "tensor holds ", dtype_name(dtype_), ", accessed as ",
                dtype_name(dtype_of<T>()));
    return static_cast<T*>(data());
  }

  // Same storage, another shape with the same element count.
  Tensor view(Shape shape) const;
  // Rows [begin, end) along dim 0, sharing storage.
  Tensor slice_rows(int64_t begin, int64_t end) const;

  // Copies into a new tensor on `device` (same dtype).
  Tensor to(Device device) const;
  // Converts to another dtype (CPU tensors only): floating types round to nearest even.
  Tensor to(DType dtype) const;
  Tensor clone() const;
  // Copies `src` (same dtype and element count) into this tensor, across devices if needed.
  void copy_from(const Tensor& src);
  void zero_();
  // Element i as double (CPU only; for tests and small checks).
  double item(int64_t i) const;

  std::string str() const;  // "F32[2, 3] on cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  DType dtype_ = DType::F32;
};

// Converts n elements between dtypes on the host (round to nearest even).
void convert_host(DType from, const void* src, DType to, void* dst, int64_t n);

// Throws InternalError unless `t` has exactly `shape` (and `dtype`, when given).
void check_shape(const Tensor& t, const Shape& shape, const char* what);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);

}  // namespace glmrt
