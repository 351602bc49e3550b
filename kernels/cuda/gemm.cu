// GEMM and linear layers (forward and backward) through cuBLAS (cublasGemmEx, fp32 accumulation
// for every dtype). c may be F32 with 16-bit a and b (fp32 gradient accumulation: dw += dyᵀ·x).
//
// Row-major trick: a row-major matrix X[r, c] is, to column-major cuBLAS, the matrix Xᵀ with
// leading dimension c. So row-major C = op(A)·op(B) is computed as the column-major product
// Cᵀ = op(B)ᵀ·op(A)ᵀ, i.e. cuBLAS gets (B, A) swapped, each with its own transpose flag and its
// row length as leading dimension, and the dimensions (n, m, k).
#include <climits>
#include <vector>

#include "kernels/cuda/column_sums.cuh"
#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

namespace {

// One cuBLAS handle per (thread, device), created on first use. The handles are deliberately
// never destroyed: at thread or process exit, destruction would race the CUDA runtime's own
// teardown, and the process is about to release everything anyway.
cublasHandle_t cublas_handle(int device) {
  thread_local std::vector<cublasHandle_t> handles;
  if (static_cast<size_t>(device) >= handles.size()) handles.resize(device + 1, nullptr);
  cublasHandle_t& handle = handles[device];
  if (!handle) {
    GLMRT_CUBLAS_CHECK(cublasCreate(&handle));  // binds the handle to the current device
    // Plain fp32 for F32 operands: TF32 tensor cores (~1e-3 relative error) stay off.
    GLMRT_CUBLAS_CHECK(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH));
    GLMRT_CUBLAS_CHECK(cublasSetStream(handle, 0));
  }
  return handle;
}

cudaDataType_t cublas_dtype(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      throw InternalError(::glmrt::detail::concat(
          "cuda gemm: unsupported dtype ", dtype_name(dtype), " (F32, F16 or BF16 expected)"));
  }
}

// c[i] = beta * c[i], with beta = 0 writing zeros whatever c held (the k = 0 product).
template <class T>
__global__ void scale_kernel(T* c, int64_t n, float beta) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    c[i] = from_float<T>(beta == 0.0f ? 0.0f : beta * to_float(c[i]));
}

// y[r, :] = bias for every row r (y is [rows, cols]).
template <class T>
__global__ void broadcast_rows_kernel(const T* __restrict__ bias, T* __restrict__ y, int64_t rows,
                                      int64_t cols) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = bias[i % cols];
}

// (dy[r, c], 0): the bias gradient's column sums.
template <class T>
struct BiasGradValue {
  const T* dy;
  int64_t cols;
  __device__ float2 operator()(int64_t r, int64_t c) const {
    return make_float2(to_float(dy[r * cols + c]), 0.0f);
  }
};

int as_cublas_int(int64_t v, const char* what) {
  GLMRT_CHECK(v >= 0 && v <= INT_MAX, "cuda gemm: ", what, " = ", v,
              " exceeds cuBLAS's 32-bit dimensions");
  return static_cast<int>(v);
}

}  // namespace

void gemm(const Tensor& a, bool trans_a, const Tensor& b, bool trans_b, Tensor& c, float alpha,
          float beta) {
  check_cuda_tensor(a, "cuda gemm a");
  const Device device = a.device();
  const DType dtype = a.dtype();
  check_operand(b, device, dtype, "cuda gemm b");
  check_grad_operand(c, device, dtype, "cuda gemm c");  // a's dtype, or F32
  const cudaDataType_t data_type = cublas_dtype(dtype);
  const cudaDataType_t c_type = cublas_dtype(c.dtype());

  const int64_t m = trans_a ? a.cols() : a.rows();
  const int64_t k = trans_a ? a.rows() : a.cols();
  const int64_t kb = trans_b ? b.cols() : b.rows();
  const int64_t n = trans_b ? b.rows() : b.cols();
  GLMRT_CHECK(k == kb, "cuda gemm: inner dimensions differ: ", a.str(), (trans_a ? "ᵀ" : ""), " · ",
              b.str(), (trans_b ? "ᵀ" : ""));
  GLMRT_CHECK(c.rows() == m && c.cols() == n, "cuda gemm: output ", c.str(), " is not [", m, ", ",
              n, "]");
  if (m == 0 || n == 0) return;

  DeviceGuard guard(device);
  if (k == 0) {  // an empty sum: c = beta * c (cuBLAS would reject the zero leading dimensions)
    dispatch_float(c.dtype(), "gemm", [&](auto zero) {
      using T = decltype(zero);
      scale_kernel<T><<<grid_for(m * n), kThreads>>>(static_cast<T*>(c.data()), m * n, beta);
      GLMRT_CUDA_CHECK_LAUNCH(scale_kernel);
    });
    return;
  }

  cublasHandle_t handle = cublas_handle(device.index);
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  // cuBLAS ignores c's contents when beta == 0 (NaN garbage included), as the op requires.
  GLMRT_CUBLAS_CHECK(cublasGemmEx(
      handle, op_b, op_a, as_cublas_int(n, "n"), as_cublas_int(m, "m"), as_cublas_int(k, "k"),
      &alpha, b.data(), data_type, as_cublas_int(b.cols(), "ldb"), a.data(), data_type,
      as_cublas_int(a.cols(), "lda"), &beta, c.data(), c_type, as_cublas_int(n, "ldc"),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  check_cuda_tensor(x, "cuda linear_forward x");
  check_operand(w, x.device(), x.dtype(), "cuda linear_forward weight");
  check_operand(y, x.device(), x.dtype(), "cuda linear_forward output");
  GLMRT_CHECK(w.ndim() == 2, "cuda linear_forward: weight must be 2-D, got ", w.str());
  const int64_t n = x.rows(), m = w.dim(0);
  GLMRT_CHECK(x.cols() == w.dim(1), "cuda linear_forward: input ", x.str(),
              " does not match weight ", w.str());
  GLMRT_CHECK(y.rows() == n && y.cols() == m, "cuda linear_forward: output ", y.str(), " is not [",
              n, ", ", m, "]");
  float beta = 0.0f;
  if (bias && bias->defined()) {
    check_operand(*bias, x.device(), x.dtype(), "cuda linear_forward bias");
    check_shape(*bias, {m}, "cuda linear_forward bias");
    // Pre-fill y with the bias and let the GEMM add to it (beta = 1): the sum is rounded to
    // the storage type once, in the GEMM's fp32 epilogue.
    if (n > 0 && m > 0) {
      DeviceGuard guard(x.device());
      dispatch_float(x.dtype(), "linear_forward", [&](auto zero) {
        using T = decltype(zero);
        broadcast_rows_kernel<T><<<grid_for(n * m), kThreads>>>(static_cast<const T*>(bias->data()),
                                                                static_cast<T*>(y.data()), n, m);
        GLMRT_CUDA_CHECK_LAUNCH(broadcast_rows_kernel);
      });
    }
    beta = 1.0f;
  }
  gemm(x, false, w, true, y, 1.0f, beta);
}

void linear_backward(const Tensor& x, const Tensor& w, const Tensor& dy, Tensor* dx, Tensor* dw,
                     Tensor* dbias) {
  check_cuda_tensor(x, "cuda linear_backward x");
  const Device device = x.device();
  check_operand(w, device, x.dtype(), "cuda linear_backward weight");
  check_operand(dy, device, x.dtype(), "cuda linear_backward dy");
  GLMRT_CHECK(w.ndim() == 2, "cuda linear_backward: weight must be 2-D, got ", w.str());
  const int64_t n = x.rows(), m = w.dim(0);
  GLMRT_CHECK(dy.rows() == n && dy.cols() == m && x.cols() == w.dim(1), "cuda linear_backward: x ",
              x.str(), ", w ", w.str(), ", dy ", dy.str());
  if (dx) {
    check_operand(*dx, device, x.dtype(), "cuda linear_backward dx");
    gemm(dy, false, w, false, *dx, 1.0f, 0.0f);  // dx = dy·w (checks dx's shape)
  }
  if (dw) gemm(dy, true, x, false, *dw, 1.0f, 1.0f);  // dw += dyᵀ·x, dw in x's dtype or F32
  if (dbias) {
    check_grad_operand(*dbias, device, x.dtype(), "cuda linear_backward dbias");
    check_shape(*dbias, {m}, "cuda linear_backward dbias");
    DeviceGuard guard(device);
    dispatch_data_grad(x.dtype(), dbias->dtype(), "linear_backward", [&](auto data, auto grad) {
      using T = decltype(data);
      using G = decltype(grad);
      launch_column_sums(n, m, BiasGradValue<T>{static_cast<const T*>(dy.data()), m},
                         static_cast<G*>(dbias->data()), static_cast<G*>(nullptr));
    });
  }
}

}  // namespace glmrt::cuda
