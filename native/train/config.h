// The model's shape: llama2.c's Transformer hyper-parameters, their validation, and the sizes
// derived from them (head sizes, the parameter list by llama2.c name, parameter counts).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mil/kernels.h"

namespace anetrain::train {

struct ModelConfig {
    int dim = 0;
    int n_layers = 0;
    int n_heads = 0;
    int n_kv_heads = 0;   // 0 = same as n_heads (multi-head attention)
    int vocab_size = 0;
    int hidden_dim = 0;   // 0 = llama2.c's rule from dim (see default_hidden_dim)
    int seq_len = 0;
    float norm_eps = 1e-5f;
    float rope_theta = 10000.f;

    int head_dim() const { return dim / n_heads; }
    int kv_dim() const { return kv_heads() * head_dim(); }
    int kv_heads() const { return n_kv_heads ? n_kv_heads : n_heads; }
    int ffn_dim() const { return hidden_dim ? hidden_dim : dim > 0 ? default_hidden_dim(dim) : 0; }
    int group_size() const { return n_heads / kv_heads(); }  // Q heads sharing one KV head

    // Throws std::invalid_argument with one line naming the bad field and the fix (the shape rules
    // are mil::KernelShape's).
    void validate() const;
    mil::KernelShape kernel_shape() const;  // what the kernel generators take

    int64_t layer_param_count() const;  // one TransformerBlock
    int64_t param_count() const;        // the whole model (embedding counted once: tied)

    // llama2.c's FeedForward rule: h = int(2 * 4 * dim / 3) rounded up to a multiple of 32 (the
    // one definition; anetrain.config calls it). std::invalid_argument when it cannot be formed.
    static int default_hidden_dim(int64_t dim, int64_t multiple_of = 32);
};

// One parameter tensor, row-major [rows][cols] as llama2.c stores it ([out][in] for linears;
// a vector has rows = 1).
struct ParamSpec {
    std::string name;   // llama2.c name, e.g. "layers.3.attention.wq"
    int64_t rows = 0, cols = 0;
    bool decay = true;    // AdamW weight decay applies (false for the RMSNorm gammas)
    bool vector = false;  // a 1-D tensor [cols] in llama2.c (the RMSNorm gammas)
    int64_t numel() const { return rows * cols; }
};

// Every parameter in llama2.c's order: tok_embeddings, then per layer attention.{wq,wk,wv,wo},
// feed_forward.{w1,w2,w3}, attention_norm, ffn_norm, and finally norm.
std::vector<ParamSpec> param_specs(const ModelConfig& cfg);

}  // namespace anetrain::train
