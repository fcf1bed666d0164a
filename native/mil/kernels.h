// The model's kernel generators: one function per kernel, each a pure function of the model
// shape (and, for the static pipeline, the weights it bakes in). Each returns MIL text and the
// weight blob files it names.
//
// Per layer, four kernels (RMSNorm, residual adds, the classifier and the loss stay on the CPU
// in fp32: an fp16 sum of squares overflows once the RMS passes ~9, and the residual stream
// would be re-quantised every layer):
//
//   attention_forward(xn)          -> o, q, k, v, attn    (q, k after RoPE; attn = softmax(qk)v)
//   ffn_forward(x2n)               -> f, h1, h3, gate     (gate = silu(h1) * h3, f = W2 gate)
//   ffn_backward(df, h1, h3)       -> dx2n, dh1, dh3
//   attention_backward(dout, q, k, v) -> dxn, dq, dk, dv  (dout = dL/do; dq, dk before RoPE)
//
// With KernelOptions::probs_tap, attention_forward also returns probs (the softmax, [KVH, rep,
// S, S]) and attention_backward takes it after v instead of recomputing scores and softmax.
//
// Two pipelines, one set of kernels; only the linear layer differs:
//   static:  y = conv(x, W) with W a BLOBFILE constant ([out, in, 1, 1]; W^T for backward)
//   dynamic: y = matmul(W, x) with W a kernel input [1, 1, out, in] in llama2.c's layout, so one
//            copy of each weight serves forward (W x) and backward (transpose_x: W^T dy).
// Activations are [1, C, 1, S] (channel-major). GQA uses matmul batch broadcasting: q as
// [KVH, rep, hd, S] against k as [KVH, 1, hd, S], so Q head h reads KV head h / rep.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mil/builder.h"

namespace anetrain::mil {

struct KernelShape {
    int dim = 0;
    int hidden = 0;
    int n_heads = 0;
    int n_kv_heads = 0;
    int seq = 0;
    double rope_theta = 10000.0;

    int head_dim() const { return dim / n_heads; }
    int q_dim() const { return dim; }
    int kv_dim() const { return head_dim() * n_kv_heads; }
    void validate() const;  // throws std::invalid_argument
};

enum class Pipeline { Static, Dynamic };
Pipeline pipeline_from_string(const std::string& s);  // "static" | "dynamic"

struct KernelOptions {
    Pipeline pipeline = Pipeline::Static;
    // Element type of every tensor in the program. fp16 is what the ANE runs; fp32 programs (ref
    // backend only) bake fp32 weights and tables so logic can be checked without fp16 effects.
    DType dtype = DType::fp16;
    Dialect dialect;
    // The attention probabilities go from the forward to the backward kernel (an S x S tensor
    // per head written, stored and read) instead of being recomputed there (two matmul-sized
    // passes over S x S). The ref backend gains (about 1.5% of a Stories15M step). On the ANE
    // the trainer keeps recomputing, as the reference pipeline does: the tap would add an S x S
    // surface per head each way, a cost not measured there.
    bool probs_tap = false;
};

// One layer's weights, fp32 row-major [out, in] as llama2.c stores them. Only the static
// pipeline reads them (to bake); pass nullptr for the dynamic pipeline.
struct LayerWeights {
    const float* wq = nullptr;  // [q_dim, dim]
    const float* wk = nullptr;  // [kv_dim, dim]
    const float* wv = nullptr;  // [kv_dim, dim]
    const float* wo = nullptr;  // [dim, q_dim]
    const float* w1 = nullptr;  // [hidden, dim]
    const float* w2 = nullptr;  // [dim, hidden]
    const float* w3 = nullptr;  // [hidden, dim]
};

struct KernelSource {
    std::string name;                           // e.g. "attention_forward"
    std::string text;                           // the MIL program
    std::map<std::string, std::string> blobs;   // "@model_path/weights/x.bin" -> file bytes
    std::vector<std::string> inputs, outputs;   // in program order
};

KernelSource attention_forward(const KernelShape& s, const KernelOptions& o, const LayerWeights* w);
KernelSource ffn_forward(const KernelShape& s, const KernelOptions& o, const LayerWeights* w);
KernelSource ffn_backward(const KernelShape& s, const KernelOptions& o, const LayerWeights* w);
KernelSource attention_backward(const KernelShape& s, const KernelOptions& o, const LayerWeights* w);

// All four, in the order above.
std::vector<KernelSource> layer_kernels(const KernelShape& s, const KernelOptions& o, const LayerWeights* w);
// Names of the per-layer kernels, in the order above.
const std::vector<std::string>& layer_kernel_names();

}  // namespace anetrain::mil
