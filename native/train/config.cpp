#include "train/config.h"

#include <stdexcept>

namespace anetrain::train {
namespace {

void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument("ModelConfig: " + message);
}

std::string num(int64_t v) { return std::to_string(v); }

}  // namespace

int ModelConfig::default_hidden_dim(int dim, int multiple_of) {
    int hidden = int(2.0 * (4 * dim) / 3.0);
    return multiple_of * ((hidden + multiple_of - 1) / multiple_of);
}

void ModelConfig::validate() const {
    require(dim > 0, "dim must be positive (got " + num(dim) + ")");
    require(n_layers > 0, "n_layers must be positive (got " + num(n_layers) + ")");
    require(n_heads > 0, "n_heads must be positive (got " + num(n_heads) + ")");
    require(dim % n_heads == 0,
            "dim " + num(dim) + " is not divisible by n_heads " + num(n_heads) + "; pick n_heads dividing dim");
    require(head_dim() % 2 == 0, "head_dim " + num(head_dim()) + " (dim/n_heads) must be even for RoPE pairs");
    require(n_kv_heads >= 0 && n_kv_heads <= n_heads,
            "n_kv_heads must be 0 (= n_heads) or between 1 and n_heads " + num(n_heads) + " (got " +
                num(n_kv_heads) + ")");
    require(n_heads % kv_heads() == 0, "n_heads " + num(n_heads) + " is not a multiple of n_kv_heads " +
                                           num(kv_heads()) + "; each KV head must serve a whole group of Q heads");
    require(vocab_size > 0, "vocab_size must be positive (got " + num(vocab_size) + ")");
    require(hidden_dim >= 0, "hidden_dim must be positive, or 0 for llama2.c's default (got " + num(hidden_dim) + ")");
    require(seq_len > 0, "seq_len must be positive (got " + num(seq_len) + ")");
    require(norm_eps > 0.f, "norm_eps must be positive (got " + std::to_string(norm_eps) + ")");
    require(rope_theta > 0.f, "rope_theta must be positive (got " + std::to_string(rope_theta) + ")");
}

int64_t ModelConfig::layer_param_count() const {
    int64_t d = dim, kv = kv_dim(), h = ffn_dim();
    return 2 * d * d + 2 * kv * d + 3 * h * d + 2 * d;
}

int64_t ModelConfig::param_count() const {
    return int64_t(vocab_size) * dim + n_layers * layer_param_count() + dim;
}

std::vector<ParamSpec> param_specs(const ModelConfig& cfg) {
    cfg.validate();
    const int64_t d = cfg.dim, kv = cfg.kv_dim(), h = cfg.ffn_dim();
    std::vector<ParamSpec> specs;
    specs.push_back({"tok_embeddings", cfg.vocab_size, d, true});
    for (int i = 0; i < cfg.n_layers; ++i) {
        const std::string p = "layers." + std::to_string(i) + ".";
        specs.push_back({p + "attention.wq", d, d, true});
        specs.push_back({p + "attention.wk", kv, d, true});
        specs.push_back({p + "attention.wv", kv, d, true});
        specs.push_back({p + "attention.wo", d, d, true});
        specs.push_back({p + "feed_forward.w1", h, d, true});
        specs.push_back({p + "feed_forward.w2", d, h, true});
        specs.push_back({p + "feed_forward.w3", h, d, true});
        specs.push_back({p + "attention_norm", 1, d, false, true});
        specs.push_back({p + "ffn_norm", 1, d, false, true});
    }
    specs.push_back({"norm", 1, d, false, true});
    return specs;
}

}  // namespace anetrain::train
