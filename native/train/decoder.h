// Text generation: llama2.c's Transformer run forward one new position at a time, with a cache of
// every earlier position's keys and values (fp32 on the CPU). The same model as the trainer's
// forward pass (train/trainer.h): RMSNorm (train/cpu_ops.h), RoPE on adjacent pairs with angles
// pos * rope_theta^(-2i/head_dim) made in double, grouped-query attention (query head h reads KV
// head h / group_size()), causal softmax, SwiGLU w2(silu(w1 x) * w3 x), tied classifier (or its
// own, when given).
//
// A call runs n tokens: the first (the prompt) as one batch of sgemm products over its positions,
// later ones one position each (sgemv: every weight read once per token, so decoding is bound by
// memory bandwidth). Activations are position-major [n][C]; the cache of each layer is
// [context][kv_dim], so a call's keys and values are written straight into it.
//
// Memory: the weights are borrowed, never copied; the decoder owns the cache
// (2 * n_layers * context * kv_dim floats), RoPE tables (context * head_dim floats) and scratch
// sized by the longest call.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "train/config.h"

namespace anetrain::train {

// Views of the weights, row-major as llama2.c stores them (shapes in ModelConfig's terms).
struct DecoderWeights {
    struct Layer {
        const float* wq = nullptr;              // [n_heads * head_dim][dim]
        const float *wk = nullptr, *wv = nullptr;  // [kv_dim][dim]
        const float* wo = nullptr;              // [dim][n_heads * head_dim]
        const float *w1 = nullptr, *w3 = nullptr;  // [ffn_dim][dim]
        const float* w2 = nullptr;              // [dim][ffn_dim]
        const float *attention_norm = nullptr, *ffn_norm = nullptr;  // [dim]
        const float *q_norm = nullptr, *k_norm = nullptr;  // [head_dim], with QK-norm (Qwen3)
    };
    const float* tok_embeddings = nullptr;  // [vocab][dim]
    const float* norm = nullptr;            // [dim]
    const float* output = nullptr;          // [vocab][dim]: the classifier; tok_embeddings when tied
    std::vector<Layer> layers;

    // Every tensor by its llama2.c name (param_specs) from `at`, which returns nullptr for a name it
    // lacks; output from "output" when `at` has it. std::invalid_argument naming a missing tensor.
    static DecoderWeights resolve(const ModelConfig& cfg, const std::function<const float*(const std::string&)>& at);
};

class Decoder {
public:
    // context: positions the cache holds (0: cfg.seq_len). The weights must outlive the decoder.
    Decoder(const ModelConfig& cfg, DecoderWeights weights, int context = 0);

    const ModelConfig& config() const { return cfg_; }
    int context() const { return context_; }
    int position() const { return pos_; }  // tokens in the cache
    void reset() { pos_ = 0; }             // forget every cached position

    // Runs tokens[0..n) at positions position() .. position() + n - 1 and caches their keys and
    // values. logits: [n][vocab] when all_positions, else [vocab] for the last token only.
    // std::out_of_range for a token outside the vocabulary, std::length_error when the cache
    // cannot hold n more positions; either leaves the decoder as it was.
    void forward(const int32_t* tokens, int n, float* logits, bool all_positions);

    size_t weight_bytes() const;   // the borrowed weights
    size_t cache_bytes() const;    // keys, values and RoPE tables
    size_t scratch_bytes() const;  // activations of the longest call so far

private:
    void ensure_scratch(int n);
    void rope(float* x, int n, int heads) const;  // n positions from pos_, [n][heads * head_dim]
    // QK-norm: RMSNorm of each head of n positions [n][heads * head_dim] with gains g, in place
    void head_norm(float* x, int n, int heads, const float* g);
    void attention(int layer, int n);             // q_ -> attn_ for n positions from pos_
    // y[n][out] = x[n][in] W^T for W [out][in]
    static void linear(const float* W, int out, int in, const float* x, int n, float* y);
    // One position: y = W x for each product, all reading x [in], their rows split into blocks
    // across the pool in one parallel region (one wait instead of one per product).
    struct MatVec {
        const float* W;  // [rows][in]
        int rows;
        float* y;  // [rows]
    };
    static void matvecs(const std::vector<MatVec>& products, int in, const float* x);

    ModelConfig cfg_;
    DecoderWeights w_;
    int context_ = 0, pos_ = 0;
    int q_dim_ = 0;  // n_heads * head_dim (not necessarily dim)
    std::vector<float> keys_, values_;          // [layer][context][kv_dim]
    std::vector<float> rope_cos_, rope_sin_;    // [context][head_dim / 2]
    int scratch_n_ = 0;                         // positions the scratch below holds
    std::vector<float> head_tmp_;  // [head_dim]: one head, normalised
    std::vector<float> x_, xn_, q_, attn_, h1_, h3_;  // [n][dim], [n][dim], [n][q_dim] x2, [n][ffn_dim] x2
    std::vector<std::vector<float>> scores_;    // per pool slot: [n][position + n]
};

}  // namespace anetrain::train
