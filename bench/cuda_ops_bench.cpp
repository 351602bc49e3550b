// Times the CUDA ops at GLM-130B-like shapes and compares each with a ceiling measured in the
// same run: a plain cuBLAS GEMM (8192³, same dtype) for the matrix ops and attention, and a
// device-to-device cudaMemcpy (bytes read + written) for the memory-bound ops.
//
// Timing: CUDA events around each call, after warm-up, median of repeats. Inputs are random
// (never zeros, which run faster than real data on some GEMMs). Prints a table last.
// Usage: cuda_ops_bench [--quick]   (--quick: fewer repeats)
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_ops.h"

namespace {

using glmrt::Device;
using glmrt::DType;
using glmrt::Shape;
using glmrt::Tensor;
namespace cuda = glmrt::cuda;

#define BENCH_CUDA(call)                                                                \
  do {                                                                                  \
    const cudaError_t status_ = (call);                                                 \
    if (status_ != cudaSuccess)                                                         \
      throw glmrt::Error(std::string(#call " failed: ") + cudaGetErrorString(status_)); \
  } while (0)
#define BENCH_CUBLAS(call)                                                                 \
  do {                                                                                     \
    const cublasStatus_t status_ = (call);                                                 \
    if (status_ != CUBLAS_STATUS_SUCCESS)                                                  \
      throw glmrt::Error(std::string(#call " failed: ") + cublasGetStatusString(status_)); \
  } while (0)

const Device kGpu = Device::cuda(0);
int g_repeats = 20;
std::mt19937 g_rng(20240607);

// Median time in milliseconds of fn() over g_repeats runs, after 3 warm-up runs.
double time_ms(const std::function<void()>& fn) {
  for (int i = 0; i < 3; ++i) fn();
  BENCH_CUDA(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int i = 0; i < g_repeats; ++i) {
    BENCH_CUDA(cudaEventRecord(start, 0));
    fn();
    BENCH_CUDA(cudaEventRecord(stop, 0));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  BENCH_CUDA(cudaGetLastError());
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// A GPU tensor of random normal values: a 1 Mi-element random block, converted on the GPU and
// tiled over the tensor (random enough for timing, and fast to make at gigabyte sizes).
Tensor random_gpu(const Shape& shape, DType dtype, float stddev = 1.0f, bool non_negative = false) {
  Tensor t = Tensor::empty(shape, dtype, kGpu);
  const int64_t block = std::min<int64_t>(t.numel(), int64_t{1} << 20);
  if (block == 0) return t;
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> values(static_cast<size_t>(block));
  for (float& v : values) v = non_negative ? std::abs(dist(g_rng)) : dist(g_rng);
  const Tensor host = Tensor::from_floats(values, {block}, DType::F32);
  Tensor chunk = Tensor::empty({block}, dtype, kGpu);
  cuda::convert(host.to(kGpu), chunk);
  const size_t chunk_bytes = chunk.nbytes();
  char* dst = static_cast<char*>(t.data());
  for (size_t done = 0; done < t.nbytes(); done += chunk_bytes)
    cuda::copy_bytes(dst + done, kGpu, chunk.data(), kGpu,
                     std::min(chunk_bytes, t.nbytes() - done));
  return t;
}

struct Row {
  std::string op, dtype, shape;
  double ms, achieved;  // TFLOP/s or GB/s
  const char* unit;
  double reference;  // the same unit
};
std::vector<Row> g_rows;

void add_row(std::string op, DType dtype, std::string shape, double ms, double work, bool flops,
             double reference) {
  const double achieved = work / (ms * 1e-3) / (flops ? 1e12 : 1e9);
  g_rows.push_back({std::move(op), std::string(glmrt::dtype_name(dtype)), std::move(shape), ms,
                    achieved, flops ? "TFLOP/s" : "GB/s", reference});
  std::printf("  %-16s %-5s %-28s %9.3f ms %9.1f %s\n", g_rows.back().op.c_str(),
              g_rows.back().dtype.c_str(), g_rows.back().shape.c_str(), ms, achieved,
              g_rows.back().unit);
  std::fflush(stdout);
}

std::string dims(std::initializer_list<int64_t> d) {
  std::string s;
  for (int64_t v : d) {
    if (!s.empty()) s += 'x';
    s += std::to_string(v);
  }
  return s;
}

// ---- Ceilings -------------------------------------------------------------------------------

// Device-to-device copy bandwidth, counting bytes read plus bytes written, in GB/s.
double memcpy_bandwidth() {
  const size_t bytes = size_t{2} << 30;
  Tensor a = random_gpu({static_cast<int64_t>(bytes / 4)}, DType::F32);
  Tensor b = Tensor::empty({static_cast<int64_t>(bytes / 4)}, DType::F32, kGpu);
  const double ms = time_ms(
      [&] { BENCH_CUDA(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, 0)); });
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

// A plain cuBLAS GEMM at 8192³ (fp32 accumulation), in TFLOP/s.
double cublas_peak(DType dtype) {
  const int n = 8192;
  const cudaDataType_t type = dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_16F;
  Tensor a = random_gpu({n, n}, dtype), b = random_gpu({n, n}, dtype);
  Tensor c = Tensor::empty({n, n}, dtype, kGpu);
  cublasHandle_t handle;
  BENCH_CUBLAS(cublasCreate(&handle));
  const float alpha = 1.0f, beta = 0.0f;
  const double ms = time_ms([&] {
    BENCH_CUBLAS(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, b.data(), type, n,
                              a.data(), type, n, &beta, c.data(), type, n, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  });
  BENCH_CUBLAS(cublasDestroy(handle));
  return 2.0 * n * double{n} * n / (ms * 1e-3) / 1e12;
}

// ---- Ops ------------------------------------------------------------------------------------

void bench_gemm(DType dtype, int64_t m, int64_t n, int64_t k, double peak) {
  Tensor a = random_gpu({m, k}, dtype), w = random_gpu({n, k}, dtype);
  Tensor c = Tensor::empty({m, n}, dtype, kGpu);
  const double ms = time_ms([&] { cuda::gemm(a, false, w, true, c, 1.0f, 0.0f); });
  add_row("gemm (x·wᵀ)", dtype, dims({m, n, k}), ms, 2.0 * m * n * k, true, peak);
}

void bench_linear(DType dtype, int64_t tokens, int64_t in, int64_t out, double peak) {
  Tensor x = random_gpu({tokens, in}, dtype), w = random_gpu({out, in}, dtype);
  Tensor bias = random_gpu({out}, dtype), y = Tensor::empty({tokens, out}, dtype, kGpu);
  const double ms = time_ms([&] { cuda::linear_forward(x, w, &bias, y); });
  add_row("linear+bias", dtype, dims({tokens, out, in}), ms, 2.0 * tokens * out * in, true, peak);
}

// Decoding (one token): a bf16 linear layer, whose time is streaming its weight, in GB/s of
// weight bytes against the memcpy bandwidth.
void bench_linear_decode(DType dtype, int64_t in, int64_t out, double bandwidth) {
  Tensor x = random_gpu({1, in}, dtype), w = random_gpu({out, in}, dtype);
  Tensor bias = random_gpu({out}, dtype), y = Tensor::empty({1, out}, dtype, kGpu);
  const double ms = time_ms([&] { cuda::linear_forward(x, w, &bias, y); });
  add_row("linear n=1", dtype, dims({1, out, in}), ms, static_cast<double>(w.nbytes()), false,
          bandwidth);
}

// The same layer with INT8 or INT4 weights (quantized_linear_forward's weight-streaming kernel):
// GB/s of weight bytes streamed (q and its F16 scales).
void bench_quantized_linear_decode(int bits, DType dtype, int64_t in, int64_t out,
                                   double bandwidth) {
  Tensor x = random_gpu({1, in}, dtype), y = Tensor::empty({1, out}, dtype, kGpu);
  Tensor scale = random_gpu({out}, DType::F16, 0.01f), bias = random_gpu({out}, dtype);
  // Random valid bytes (values in [-127, 127], or two nibbles in [-7, 7]) in a 1 MiB block, tiled.
  Tensor q = Tensor::empty({out, in * bits / 8}, DType::I8, kGpu);
  std::vector<int8_t> block(std::min<size_t>(q.nbytes(), size_t{1} << 20));
  std::uniform_int_distribution<int> value(bits == 8 ? -127 : -7, bits == 8 ? 127 : 7);
  for (int8_t& b : block)
    b = bits == 8 ? static_cast<int8_t>(value(g_rng))
                  : static_cast<int8_t>(((value(g_rng) & 0xF) << 4) | (value(g_rng) & 0xF));
  char* dst = static_cast<char*>(q.data());
  for (size_t done = 0; done < q.nbytes(); done += block.size())
    cuda::copy_bytes(dst + done, kGpu, block.data(), Device::cpu(),
                     std::min(block.size(), q.nbytes() - done));
  const double ms =
      time_ms([&] { cuda::quantized_linear_forward(x, q, scale, bits, &bias, y); });
  add_row(bits == 8 ? "qlinear int8 n=1" : "qlinear int4 n=1", dtype, dims({1, out, in}), ms,
          static_cast<double>(q.nbytes() + scale.nbytes()), false, bandwidth);
}

void bench_layernorm(DType dtype, int64_t rows, int64_t h, double bandwidth) {
  Tensor x = random_gpu({rows, h}, dtype), w = random_gpu({h}, dtype), b = random_gpu({h}, dtype);
  Tensor y = Tensor::empty({rows, h}, dtype, kGpu);
  Tensor mean = Tensor::empty({rows}, DType::F32, kGpu),
         rstd = Tensor::empty({rows}, DType::F32, kGpu);
  const double ms = time_ms([&] { cuda::layernorm_forward(x, w, b, 1e-5f, y, &mean, &rstd); });
  add_row("layernorm", dtype, dims({rows, h}), ms, 2.0 * static_cast<double>(x.nbytes()), false,
          bandwidth);
}

void bench_geglu(DType dtype, int64_t rows, int64_t f, double bandwidth) {
  Tensor u = random_gpu({rows, 2 * f}, dtype), out = Tensor::empty({rows, f}, dtype, kGpu);
  const double ms = time_ms([&] { cuda::geglu_forward(u, out); });
  add_row("geglu", dtype, dims({rows, 2 * f}), ms, static_cast<double>(u.nbytes() + out.nbytes()),
          false, bandwidth);
}

void bench_scale_add(DType dtype, int64_t rows, int64_t h, double bandwidth) {
  Tensor a = random_gpu({rows, h}, dtype), b = random_gpu({rows, h}, dtype);
  Tensor out = Tensor::empty({rows, h}, dtype, kGpu);
  const double ms = time_ms([&] { cuda::scale_add(11.83f, a, b, out); });
  add_row("scale_add", dtype, dims({rows, h}), ms, 3.0 * static_cast<double>(a.nbytes()), false,
          bandwidth);
}

void bench_rope(DType dtype, int64_t tokens, int64_t heads, int64_t d, double bandwidth) {
  Tensor qkv = random_gpu({tokens, heads * 3 * d}, dtype);
  std::vector<float> angles(static_cast<size_t>(2048 * d / 2));
  for (size_t i = 0; i < angles.size(); ++i) angles[i] = std::cos(0.001f * static_cast<float>(i));
  Tensor cos = Tensor::from_floats(angles, {2048, d / 2}).to(kGpu);
  Tensor sin = cos.clone();
  std::vector<int32_t> positions(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) positions[t] = static_cast<int32_t>(t % 2048);
  Tensor pos = Tensor::from_ints(positions, {tokens}).to(kGpu);
  const double ms = time_ms([&] { cuda::rope_forward(qkv, pos, cos, sin, heads, d); });
  // q and k are read and written: 2/3 of qkv, twice.
  add_row("rope (in place)", dtype, dims({tokens, heads, d}), ms,
          2.0 * static_cast<double>(qkv.nbytes()) * 2.0 / 3.0, false, bandwidth);
}

void bench_attention(DType dtype, int64_t batch, int64_t seq, int64_t heads, int64_t d, double peak,
                     float dropout_p = 0.0f) {
  Tensor qkv = random_gpu({batch * seq, heads * 3 * d}, dtype);
  // One causal segment per row: query t sees keys [0, t].
  std::vector<int32_t> spans;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t) spans.insert(spans.end(), {0, 0, static_cast<int32_t>(seq)});
  Tensor mask = Tensor::from_ints(spans, {batch * seq, 3}).to(kGpu);
  Tensor ctx = Tensor::empty({batch * seq, heads * d}, dtype, kGpu);
  Tensor lse = Tensor::empty({batch, heads, seq}, DType::F32, kGpu);
  glmrt::DropoutSpec dropout;
  dropout.p = dropout_p;
  dropout.key = 1234;
  const double ms = time_ms(
      [&] { cuda::attention_forward(qkv, mask, batch, heads, d, 1.0f, dropout, ctx, &lse); });
  const double pairs = static_cast<double>(batch * heads) * seq * (seq + 1) / 2.0;
  add_row(dropout_p > 0 ? "attn causal+drop" : "attention causal", dtype,
          dims({batch, seq, heads, d}), ms, 4.0 * d * pairs, true, peak);
}

void bench_convert(DType from, DType to, int64_t rows, int64_t h, double bandwidth) {
  Tensor src = random_gpu({rows, h}, from), dst = Tensor::empty({rows, h}, to, kGpu);
  const double ms = time_ms([&] { cuda::convert(src, dst); });
  add_row(std::string("convert->") + std::string(glmrt::dtype_name(to)), from, dims({rows, h}), ms,
          static_cast<double>(src.nbytes() + dst.nbytes()), false, bandwidth);
}

void bench_embedding(DType dtype, int64_t tokens, int64_t vocab_rows, int64_t h, double bandwidth) {
  Tensor table = random_gpu({vocab_rows, h}, dtype);
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  std::uniform_int_distribution<int32_t> in_shard(0, static_cast<int32_t>(vocab_rows - 1));
  for (int32_t& id : ids) id = in_shard(g_rng);
  Tensor id_tensor = Tensor::from_ints(ids, {tokens}).to(kGpu);
  Tensor out = Tensor::empty({tokens, h}, dtype, kGpu);
  const double ms = time_ms([&] { cuda::embedding_forward(id_tensor, table, 0, out); });
  add_row("embedding", dtype, dims({tokens, vocab_rows, h}), ms,
          2.0 * static_cast<double>(out.nbytes()), false, bandwidth);
}

void bench_linear_backward(DType dtype, int64_t tokens, int64_t in, int64_t out, double peak) {
  Tensor x = random_gpu({tokens, in}, dtype), w = random_gpu({out, in}, dtype);
  Tensor dy = random_gpu({tokens, out}, dtype), dx = Tensor::empty({tokens, in}, dtype, kGpu);
  Tensor dw = random_gpu({out, in}, DType::F32, 0.01f), db = random_gpu({out}, DType::F32, 0.01f);
  const double ms = time_ms([&] { cuda::linear_backward(x, w, dy, &dx, &dw, &db); });
  add_row("linear bwd f32 dw", dtype, dims({tokens, out, in}), ms, 4.0 * tokens * out * in, true,
          peak);
}

void bench_layernorm_backward(DType dtype, int64_t rows, int64_t h, double bandwidth) {
  Tensor x = random_gpu({rows, h}, dtype), w = random_gpu({h}, dtype), b = random_gpu({h}, dtype);
  Tensor y = Tensor::empty({rows, h}, dtype, kGpu), dy = random_gpu({rows, h}, dtype);
  Tensor mean = Tensor::empty({rows}, DType::F32, kGpu),
         rstd = Tensor::empty({rows}, DType::F32, kGpu);
  cuda::layernorm_forward(x, w, b, 1e-5f, y, &mean, &rstd);
  Tensor dx = Tensor::empty({rows, h}, dtype, kGpu);
  Tensor dw = random_gpu({h}, DType::F32), db = random_gpu({h}, DType::F32);
  const double ms = time_ms([&] { cuda::layernorm_backward(x, w, mean, rstd, dy, dx, &dw, &db); });
  // Fewest bytes: x and dy read once, dx written once.
  add_row("layernorm bwd", dtype, dims({rows, h}), ms, 3.0 * static_cast<double>(x.nbytes()), false,
          bandwidth);
}

void bench_cross_entropy(DType dtype, int64_t tokens, int64_t vocab, double bandwidth) {
  Tensor logits = random_gpu({tokens, vocab}, dtype, 3.0f);
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  std::uniform_int_distribution<int32_t> any(0, static_cast<int32_t>(vocab - 1));
  for (int32_t& id : ids) id = any(g_rng);
  Tensor targets = Tensor::from_ints(ids, {tokens}).to(kGpu);
  Tensor row_max = Tensor::empty({tokens}, DType::F32, kGpu), sum = row_max.clone();
  Tensor target = row_max.clone(), dloss = random_gpu({tokens}, DType::F32);
  Tensor dlogits = Tensor::empty({tokens, vocab}, dtype, kGpu);
  const double ms = time_ms([&] {
    cuda::cross_entropy_max(logits, row_max);
    cuda::cross_entropy_sums(logits, targets, 0, row_max, sum, target);
    cuda::cross_entropy_backward(logits, targets, 0, row_max, sum, dloss, dlogits);
  });
  // Fewest bytes of a fused version: logits read once, dlogits written once.
  add_row("cross-entropy f+b", dtype, dims({tokens, vocab}), ms,
          2.0 * static_cast<double>(logits.nbytes()), false, bandwidth);
}

void bench_attention_backward(DType dtype, int64_t batch, int64_t seq, int64_t heads, int64_t d,
                              double peak) {
  Tensor qkv = random_gpu({batch * seq, heads * 3 * d}, dtype);
  std::vector<int32_t> spans;
  for (int64_t t = 0; t < batch * seq; ++t)
    spans.insert(spans.end(), {0, 0, static_cast<int32_t>(seq)});
  Tensor mask = Tensor::from_ints(spans, {batch * seq, 3}).to(kGpu);
  Tensor ctx = Tensor::empty({batch * seq, heads * d}, dtype, kGpu);
  Tensor lse = Tensor::empty({batch, heads, seq}, DType::F32, kGpu);
  const glmrt::DropoutSpec no_dropout;
  cuda::attention_forward(qkv, mask, batch, heads, d, 1.0f, no_dropout, ctx, &lse);
  Tensor dctx = random_gpu({batch * seq, heads * d}, dtype);
  Tensor dqkv = Tensor::empty({batch * seq, heads * 3 * d}, dtype, kGpu);
  const double ms = time_ms([&] {
    cuda::attention_backward(qkv, mask, batch, heads, d, 1.0f, no_dropout, ctx, lse, dctx, dqkv);
  });
  // The usual accounting: the backward does 2.5x the forward's matrix work.
  const double pairs = static_cast<double>(batch * heads) * seq * (seq + 1) / 2.0;
  add_row("attention bwd", dtype, dims({batch, seq, heads, d}), ms, 2.5 * 4.0 * d * pairs, true,
          peak);
}

void bench_adamw(int64_t n, double bandwidth) {
  Tensor p = random_gpu({n}, DType::F32), g = random_gpu({n}, DType::F32);
  Tensor m = random_gpu({n}, DType::F32, 0.01f);
  Tensor v = random_gpu({n}, DType::F32, 0.01f, true);  // second moments are non-negative
  int64_t step = 1;
  const double ms = time_ms(
      [&] { cuda::adamw_update(p, g, m, v, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, step++, 1.0f); });
  add_row("adamw", DType::F32, dims({n}), ms, 7.0 * static_cast<double>(p.nbytes()), false,
          bandwidth);
}

void print_table() {
  std::printf("\n%-18s %-5s %-24s %10s %12s %9s %12s %7s\n", "op", "dtype", "shape", "ms",
              "achieved", "unit", "reference", "ratio");
  for (const Row& r : g_rows)
    std::printf("%-18s %-5s %-24s %10.3f %12.1f %9s %12.1f %7.3f\n", r.op.c_str(), r.dtype.c_str(),
                r.shape.c_str(), r.ms, r.achieved, r.unit, r.reference, r.achieved / r.reference);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--quick") == 0) g_repeats = 5;
  if (cuda::device_count() == 0) {
    std::printf("cuda_ops_bench: no CUDA device visible, nothing to measure\n");
    return 0;
  }
  try {
    cudaDeviceProp prop;
    BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, %.1f GiB, L2 %.0f MiB; median of %d runs\n", prop.name,
                prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0,
                prop.l2CacheSize / 1048576.0, g_repeats);

    const double bandwidth = memcpy_bandwidth();
    const double peak_bf16 = cublas_peak(DType::BF16);
    const double peak_f16 = cublas_peak(DType::F16);
    std::printf(
        "ceilings: D2D memcpy %.0f GB/s (read+write); cuBLAS 8192^3 bf16 %.0f TFLOP/s, "
        "fp16 %.0f TFLOP/s\n",
        bandwidth, peak_bf16, peak_f16);

    // GLM-130B: h = 12288, 96 heads of 128, FFN 32768; 8192 tokens (4 x 2048).
    const int64_t tokens = 8192, h = 12288, heads = 96, d = 128, ffn = 32768;
    bench_gemm(DType::BF16, tokens, h, h, peak_bf16);
    bench_gemm(DType::F16, tokens, h, h, peak_f16);
    bench_linear(DType::BF16, tokens, h, 3 * h, peak_bf16);  // the qkv projection
    bench_linear_decode(DType::BF16, h, h, bandwidth);  // decoding: weight-bandwidth bound
    bench_quantized_linear_decode(8, DType::BF16, h, h, bandwidth);
    bench_quantized_linear_decode(4, DType::BF16, h, h, bandwidth);
    bench_layernorm(DType::BF16, tokens, h, bandwidth);
    bench_layernorm(DType::F16, tokens, h, bandwidth);
    bench_geglu(DType::BF16, tokens, ffn, bandwidth);
    bench_scale_add(DType::BF16, tokens, h, bandwidth);
    bench_rope(DType::BF16, tokens, heads, d, bandwidth);
    bench_embedding(DType::BF16, tokens, 150528 / 8, h, bandwidth);  // one of 8 vocab shards
    bench_convert(DType::F32, DType::BF16, tokens, h, bandwidth);
    bench_attention(DType::BF16, 1, 2048, heads, d, peak_bf16);
    bench_attention(DType::F16, 1, 2048, heads, d, peak_f16);
    bench_attention(DType::BF16, 1, 2048, heads, d, peak_bf16, 0.1f);  // training: dropout on
    bench_linear_backward(DType::BF16, tokens, h, h, peak_bf16);
    bench_layernorm_backward(DType::BF16, tokens, h, bandwidth);
    bench_cross_entropy(DType::BF16, tokens, 150528 / 8, bandwidth);
    bench_attention_backward(DType::BF16, 1, 2048, heads, d, peak_bf16);
    bench_adamw(int64_t{100} << 20, bandwidth);
    cuda::synchronize();
    print_table();
  } catch (const std::exception& e) {
    print_table();
    std::fprintf(stderr, "cuda_ops_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
