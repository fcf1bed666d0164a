#include "train/config.h"

#include <cmath>
#include <limits>
#include <stdexcept>

namespace anetrain::train {
namespace {

void require(bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument("ModelConfig: " + message);
}

std::string num(int64_t v) { return std::to_string(v); }

}  // namespace

int ModelConfig::default_hidden_dim(int64_t dim, int64_t multiple_of) {
    if (dim <= 0 || multiple_of <= 0)
        throw std::invalid_argument("dim and multiple_of must be positive to derive hidden_dim (got dim " +
                                    num(dim) + ", multiple_of " + num(multiple_of) + ")");
    // in double and int64, as Python computes it, so a large dim cannot overflow on the way
    const int64_t hidden = int64_t(2.0 * double(4 * dim) / 3.0);
    const int64_t rounded = multiple_of * ((hidden + multiple_of - 1) / multiple_of);
    if (rounded > std::numeric_limits<int>::max())
        throw std::invalid_argument("dim " + num(dim) + " gives a hidden_dim of " + num(rounded) +
                                    ", more than a C int holds; use a smaller dim");
    return int(rounded);
}

void ModelConfig::validate() const {
    require(n_layers > 0, "n_layers must be positive (got " + num(n_layers) + ")");
    require(vocab_size > 0, "vocab_size must be positive (got " + num(vocab_size) + ")");
    require(std::isfinite(norm_eps) && norm_eps > 0.f,
            "norm_eps must be positive and finite (got " + std::to_string(norm_eps) + ")");
    try {  // the shape rules the kernels share: defined once, in mil::KernelShape
        kernel_shape().validate();
    } catch (const std::invalid_argument& e) {
        require(false, e.what());
    }
}

mil::KernelShape ModelConfig::kernel_shape() const {
    mil::KernelShape s;
    s.dim = dim;
    s.hidden = ffn_dim();
    s.n_heads = n_heads;
    s.n_kv_heads = kv_heads();
    s.seq = seq_len;
    s.rope_theta = rope_theta;
    return s;
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
