// Vocab-parallel embedding on the GPU: the lookup and its scatter-add gradient.
//
// The backward pass is deterministic and rounds each table row once: the token ids (a few KB)
// are brought to the host and grouped by table row (tokens in order), then one thread per
// (touched row, column) sums its tokens' gradients in fp32 and adds the sum to the table.
// That costs one host synchronisation per call (once per step, at the end of the backward pass),
// and avoids atomics, whose order (and 16-bit rounding) would vary from run to run.
#include <algorithm>
#include <numeric>
#include <vector>

#include "kernels/cuda/cuda_common.cuh"

namespace glmrt::cuda {

namespace {

// out[t, :] = table[ids[t] - vocab_start, :] when that row is in this shard, else zeros.
template <class T>
__global__ void embedding_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                                 int64_t vocab_start, int64_t table_rows, int64_t tokens,
                                 int64_t width, T* __restrict__ out) {
  const int64_t n = tokens * width;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t t = i / width, col = i - t * width;
    const int64_t row = static_cast<int64_t>(ids[t]) - vocab_start;
    out[i] = (row >= 0 && row < table_rows) ? table[row * width + col] : from_float<T>(0.0f);
  }
}

// One touched table row: its index and its tokens order[begin, end).
struct RowGroup {
  int64_t row;
  int32_t begin, end;
};

// dtable[g.row, c] += Σ_{k in [g.begin, g.end)} dout[order[k], c] for group g = blockIdx.x.
template <class T, class G>
__global__ void embedding_backward_kernel(const RowGroup* __restrict__ groups,
                                          const int32_t* __restrict__ order,
                                          const T* __restrict__ dout, int64_t width,
                                          G* __restrict__ dtable) {
  const RowGroup g = groups[blockIdx.x];
  for (int64_t c = blockIdx.y * int64_t{blockDim.x} + threadIdx.x; c < width;
       c += int64_t{gridDim.y} * blockDim.x) {
    float sum = 0.0f;
    for (int32_t k = g.begin; k < g.end; ++k) sum += to_float(dout[order[k] * width + c]);
    G* dst = dtable + g.row * width + c;
    *dst = from_float<G>(to_float(*dst) + sum);
  }
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, int64_t vocab_start, Tensor& out) {
  check_cuda_tensor(table, "cuda embedding_forward table");
  check_operand(ids, table.device(), DType::I32, "cuda embedding_forward ids");
  check_operand(out, table.device(), table.dtype(), "cuda embedding_forward output");
  const int64_t tokens = ids.numel(), width = table.cols(), table_rows = table.rows();
  GLMRT_CHECK(out.rows() == tokens && out.cols() == width, "cuda embedding_forward: output ",
              out.str(), " for ", tokens, " ids and table ", table.str());
  if (tokens * width == 0) return;
  DeviceGuard guard(table.device());
  dispatch_float(table.dtype(), "embedding_forward", [&](auto zero) {
    using T = decltype(zero);
    embedding_kernel<T><<<grid_for(tokens * width), kThreads>>>(
        static_cast<const int32_t*>(ids.data()), static_cast<const T*>(table.data()), vocab_start,
        table_rows, tokens, width, static_cast<T*>(out.data()));
    GLMRT_CUDA_CHECK_LAUNCH(embedding_kernel);
  });
}

void embedding_backward(const Tensor& ids, const Tensor& dout, int64_t vocab_start,
                        Tensor& dtable) {
  check_cuda_tensor(dout, "cuda embedding_backward dout");
  const Device device = dout.device();
  check_operand(ids, device, DType::I32, "cuda embedding_backward ids");
  check_grad_operand(dtable, device, dout.dtype(), "cuda embedding_backward dtable");
  const int64_t tokens = ids.numel(), width = dtable.cols(), table_rows = dtable.rows();
  GLMRT_CHECK(dout.rows() == tokens && dout.cols() == width, "cuda embedding_backward: dout ",
              dout.str(), " for ", tokens, " ids and table ", dtable.str());
  GLMRT_CHECK(tokens <= INT32_MAX, "cuda embedding_backward: too many tokens: ", tokens);
  if (tokens == 0 || width == 0) return;

  // Group the tokens by table row on the host (stable: tokens keep their order in a row).
  std::vector<int32_t> id_values(static_cast<size_t>(tokens));
  copy_bytes(id_values.data(), Device::cpu(), ids.data(), device, ids.nbytes());
  std::vector<int32_t> order;
  order.reserve(id_values.size());
  for (int32_t t = 0; t < static_cast<int32_t>(tokens); ++t) {
    const int64_t row = static_cast<int64_t>(id_values[t]) - vocab_start;
    if (row >= 0 && row < table_rows) order.push_back(t);
  }
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return id_values[a] < id_values[b]; });
  std::vector<RowGroup> groups;
  for (int32_t k = 0; k < static_cast<int32_t>(order.size()); ++k) {
    const int64_t row = static_cast<int64_t>(id_values[order[k]]) - vocab_start;
    if (groups.empty() || groups.back().row != row) groups.push_back({row, k, k});
    groups.back().end = k + 1;
  }
  if (groups.empty()) return;  // no token of this shard

  DeviceGuard guard(device);
  const size_t order_bytes = order.size() * sizeof(int32_t);
  const size_t groups_offset = (order_bytes + 15) / 16 * 16;
  const size_t groups_bytes = groups.size() * sizeof(RowGroup);
  DeviceScratch scratch(groups_offset + groups_bytes);
  char* base = scratch.as<char>();
  GLMRT_CUDA_CHECK(cudaMemcpy(base, order.data(), order_bytes, cudaMemcpyHostToDevice));
  GLMRT_CUDA_CHECK(
      cudaMemcpy(base + groups_offset, groups.data(), groups_bytes, cudaMemcpyHostToDevice));
  const unsigned col_blocks = static_cast<unsigned>(std::min<int64_t>((width + 255) / 256, 64));
  const dim3 grid(static_cast<unsigned>(groups.size()), col_blocks);
  dispatch_data_grad(dout.dtype(), dtable.dtype(), "embedding_backward", [&](auto data, auto grad) {
    using T = decltype(data);
    using G = decltype(grad);
    embedding_backward_kernel<T, G>
        <<<grid, 256>>>(reinterpret_cast<const RowGroup*>(base + groups_offset),
                        reinterpret_cast<const int32_t*>(base), static_cast<const T*>(dout.data()),
                        width, static_cast<G*>(dtable.data()));
    GLMRT_CUDA_CHECK_LAUNCH(embedding_backward_kernel);
  });
  // The host vectors die here; cudaMemcpy from pageable memory has already consumed them.
}

}  // namespace glmrt::cuda
