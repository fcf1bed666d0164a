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
// With QK-norm (Qwen3) each q and k head is RMS-normalised over head_dim and scaled by its gains
// before RoPE, inside the attention kernels (the norm is per head, so it needs no fp32 residual
// stream; the mean square is taken of x scaled by a power of two, so fp16 holds it up to an RMS of
// several hundred). The forward then returns q, k as the projections before the norm, which the
// backward needs for the norm's gradient; it recomputes norm and RoPE from them. The backward
// returns dq, dk before the norm (the projections' gradients) and two more results, dq_norm and
// dk_norm [head_dim, S]: the gains' gradients summed over heads, one column per position (the
// trainer sums the columns).
//
// Two pipelines, one set of kernels; only the linear layer differs:
//   static:  y = conv(x, W) with W a BLOBFILE constant ([out, in, 1, 1]; W^T for backward)
//   dynamic: y = matmul(W, x) with W [1, 1, out, in] read from the kernel's input in llama2.c's
//            layout, so one copy of each weight serves forward (W x) and backward
//            (transpose_x: W^T dy).
// Activations are [1, C, 1, S] (channel-major).
//
// Two shapes of the same programs (KernelOptions::ane_shaped):
//   ANE-shaped: what the Apple Neural Engine runs (docs/ane-rules.md). One fp16 input
//     [1, C, 1, W] holding every tensor the kernel reads as blocks side by side along the width
//     (activations [C_i, S], then, dynamic, each raw weight [out, in]), each block at channel 0;
//     one output [1, C, 1, S] with every result concatenated on the channel axis. Every tensor
//     is rank 4 with batch 1: heads on axis 1 ([1, H, hd, S]), GQA by repeating each K/V head
//     inside the program (slices and a concat on axis 1), gradients of a shared head summed by
//     slices and adds. KernelSource::input_layout / output_layout say which block holds which
//     tensor.
//   split: one program input per tensor and one output per result, heads on the batch axis
//     ([KVH, rep, hd, S]) with matmul broadcasting for GQA. The ref backend runs these faster
//     (inputs read in place, no packing), and KernelOptions::probs_tap is available only here:
//     attention_forward also returns probs (the softmax, [KVH, rep, S, S]) and
//     attention_backward takes it after v instead of recomputing scores and softmax.
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
    int head_dim = 0;  // 0 = dim / n_heads (llama2.c's rule, defined here once)
    double rope_theta = 10000.0;
    bool qk_norm = false;    // RMSNorm of each q and k head over head_dim, with gains, before RoPE
    double norm_eps = 1e-5;  // the QK-norm's epsilon (the model's RMSNorm epsilon)

    int head_size() const { return head_dim ? head_dim : (n_heads > 0 ? dim / n_heads : 0); }
    int q_dim() const { return n_heads * head_size(); }
    int kv_dim() const { return n_kv_heads * head_size(); }
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
    // The ANE's program shape (see the top of this file); false: the split shape.
    bool ane_shaped = false;
    // Split shape only. The attention probabilities go from the forward to the backward kernel
    // (an S x S tensor per head written, stored and read) instead of being recomputed there (two
    // matmul-sized passes over S x S), which the ref backend gains from. The ANE-shaped programs
    // recompute, as the reference pipeline does.
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
    const float* q_norm = nullptr;  // [head_dim], with QK-norm
    const float* k_norm = nullptr;  // [head_dim], with QK-norm
};

// Where one tensor lives in an ANE-shaped program's single input or output [1, C, 1, W]: the
// rectangle of channels [channel, channel + channels) and columns [column, column + columns),
// holding the tensor row-major ([C_i, S] activations, [out, in] weights).
struct Block {
    std::string name;
    int64_t channel = 0, column = 0, channels = 0, columns = 0;
};

struct KernelSource {
    std::string name;                           // e.g. "attention_forward"
    std::string text;                           // the MIL program
    std::map<std::string, std::string> blobs;   // "@model_path/weights/x.bin" -> file bytes
    std::vector<std::string> inputs, outputs;   // program inputs and outputs, in program order
    // ANE-shaped only: the tensors inside the one input and the one output (empty when split).
    std::vector<Block> input_layout, output_layout;
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
