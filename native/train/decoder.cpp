#include "train/decoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "core/blas.h"
#include "core/threads.h"
#include "core/vec_math.h"
#include "train/cpu_ops.h"

namespace anetrain::train {
namespace {
constexpr int64_t kParallelAttentionMacs = int64_t(1) << 16;  // scores' multiply-adds (values' as many again)
}  // namespace

DecoderWeights DecoderWeights::resolve(const ModelConfig& cfg,
                                       const std::function<const float*(const std::string&)>& at) {
    auto need = [&](const std::string& name) {
        const float* p = at(name);
        if (!p) throw std::invalid_argument("decoder weights: tensor '" + name + "' is missing");
        return p;
    };
    DecoderWeights w;
    w.tok_embeddings = need("tok_embeddings");
    w.norm = need("norm");
    const float* output = at("output");
    w.output = output ? output : w.tok_embeddings;
    for (int l = 0; l < cfg.n_layers; ++l) {
        const std::string layer = "layers." + std::to_string(l) + ".";
        const std::string a = layer + "attention.", f = layer + "feed_forward.";
        Layer L;
        L.wq = need(a + "wq");
        L.wk = need(a + "wk");
        L.wv = need(a + "wv");
        L.wo = need(a + "wo");
        L.w1 = need(f + "w1");
        L.w2 = need(f + "w2");
        L.w3 = need(f + "w3");
        L.attention_norm = need(layer + "attention_norm");
        L.ffn_norm = need(layer + "ffn_norm");
        if (cfg.qk_norm) {
            L.q_norm = need(a + "q_norm");
            L.k_norm = need(a + "k_norm");
        }
        w.layers.push_back(L);
    }
    return w;
}

Decoder::Decoder(const ModelConfig& cfg, DecoderWeights weights, int context)
    : cfg_(cfg), w_(std::move(weights)), context_(context > 0 ? context : cfg.seq_len) {
    cfg_.validate();
    if (context < 0) throw std::invalid_argument("decoder context must be positive (0: the model's seq_len)");
    if (int(w_.layers.size()) != cfg_.n_layers || !w_.tok_embeddings || !w_.norm || !w_.output)
        throw std::invalid_argument("decoder weights do not match the config (use DecoderWeights::resolve)");
    const int hd = cfg_.head_size(), half = hd / 2;
    q_dim_ = cfg_.q_dim();
    head_tmp_.resize(size_t(hd));
    const size_t kv = size_t(cfg_.n_layers) * size_t(context_) * size_t(cfg_.kv_dim());
    keys_.assign(kv, 0.f);
    values_.assign(kv, 0.f);
    rope_cos_.resize(size_t(context_) * half);
    rope_sin_.resize(size_t(context_) * half);
    for (int p = 0; p < half; ++p) {
        // the angles as the kernel generators make them (mil/kernels.cpp), in double
        const double freq = std::pow(double(cfg_.rope_theta), -2.0 * double(p) / double(hd));
        for (int t = 0; t < context_; ++t) {
            const double angle = double(t) * freq;
            rope_cos_[size_t(t) * half + p] = float(std::cos(angle));
            rope_sin_[size_t(t) * half + p] = float(std::sin(angle));
        }
    }
}

size_t Decoder::weight_bytes() const {
    int64_t n = 0;
    bool output_listed = false;  // a config with a classifier of its own lists it as "output"
    for (const ParamSpec& p : param_specs(cfg_)) {
        n += p.numel();
        output_listed = output_listed || p.name == "output";
    }
    if (!output_listed && w_.output != w_.tok_embeddings) n += int64_t(cfg_.vocab_size) * cfg_.dim;
    return size_t(n) * sizeof(float);
}

size_t Decoder::cache_bytes() const {
    return (keys_.size() + values_.size() + rope_cos_.size() + rope_sin_.size()) * sizeof(float);
}

size_t Decoder::scratch_bytes() const {
    size_t n = x_.size() + xn_.size() + q_.size() + attn_.size() + h1_.size() + h3_.size();
    for (const auto& s : scores_) n += s.size();
    return n * sizeof(float);
}

void Decoder::ensure_scratch(int n) {
    const size_t slots = size_t(threads::num_threads());
    if (scores_.size() < slots) scores_.resize(slots);
    // a slot's scores are [n][position + n]: at most n * context
    for (auto& s : scores_)
        if (s.size() < size_t(n) * context_) s.resize(size_t(n) * context_);
    if (n <= scratch_n_) return;
    const size_t N = size_t(n), D = size_t(cfg_.dim), H = size_t(cfg_.ffn_dim());
    x_.resize(N * D);
    xn_.resize(N * D);
    q_.resize(N * q_dim_);
    attn_.resize(N * q_dim_);
    h1_.resize(N * H);
    h3_.resize(N * H);
    scratch_n_ = n;
}

void Decoder::linear(const float* W, int out, int in, const float* x, int n, float* y) {
    if (n == 1) blas::sgemv(false, out, in, 1.f, W, in, x, 0.f, y);
    else blas::sgemm(false, true, n, out, in, 1.f, x, in, W, in, 0.f, y, out);
}

void Decoder::matvecs(const std::vector<MatVec>& products, int in, const float* x) {
    size_t rows = 0;
    for (const MatVec& p : products) rows += size_t(p.rows);
    threads::parallel_for(rows, 16, [&](size_t b, size_t e) {
        size_t first = 0;  // the product's first row in the concatenation
        for (const MatVec& p : products) {
            const size_t lo = std::max(b, first), hi = std::min(e, first + size_t(p.rows)), r = lo - first;
            if (lo < hi) blas::sgemv_serial(false, int(hi - lo), in, 1.f, p.W + r * in, in, x, 0.f, p.y + r);
            first += size_t(p.rows);
        }
    });
}

void Decoder::rope(float* x, int n, int heads) const {
    const int hd = cfg_.head_size(), half = hd / 2;
    for (int p = 0; p < n; ++p) {
        const float* c = rope_cos_.data() + size_t(pos_ + p) * half;
        const float* s = rope_sin_.data() + size_t(pos_ + p) * half;
        for (int h = 0; h < heads; ++h) {
            float* v = x + (size_t(p) * heads + h) * hd;
            for (int i = 0; i < half; ++i) {
                const float e = v[2 * i], o = v[2 * i + 1];
                v[2 * i] = e * c[i] - o * s[i];
                v[2 * i + 1] = o * c[i] + e * s[i];
            }
        }
    }
}

void Decoder::head_norm(float* x, int n, int heads, const float* g) {
    const int hd = cfg_.head_size();
    float rrms;
    for (size_t r = 0; r < size_t(n) * size_t(heads); ++r) {
        float* v = x + r * size_t(hd);
        cpu::rmsnorm_fwd(v, g, hd, 1, cfg_.norm_eps, head_tmp_.data(), &rrms);
        std::memcpy(v, head_tmp_.data(), size_t(hd) * sizeof(float));
    }
}

void Decoder::attention(int layer, int n) {
    const int hd = cfg_.head_size(), kvd = cfg_.kv_dim(), group = cfg_.group_size(), T = pos_ + n;
    const float scale = float(1.0 / std::sqrt(double(hd)));
    const float* K = keys_.data() + size_t(layer) * context_ * kvd;
    const float* V = values_.data() + size_t(layer) * context_ * kvd;
    auto head = [&](size_t slot, size_t h) {
        const float* Kg = K + (h / group) * hd;  // [T][hd], rows kvd apart
        const float* Vg = V + (h / group) * hd;
        const float* q = q_.data() + h * hd;  // [n][hd], rows q_dim apart
        float* out = attn_.data() + h * hd;
        float* s = scores_[slot].data();  // [n][T]
        if (n == 1) blas::sgemv_serial(false, T, hd, 1.f, Kg, kvd, q, 0.f, s);
        else blas::sgemm_serial(false, true, n, T, hd, 1.f, q, q_dim_, Kg, kvd, 0.f, s, T);
        for (int i = 0; i < n; ++i) {
            float* row = s + size_t(i) * T;
            const int seen = pos_ + i + 1;  // causal: position pos_ + i sees itself and what came before
            for (int t = 0; t < seen; ++t) row[t] *= scale;
            softmax_row(row, seen);
            std::fill(row + seen, row + T, 0.f);
        }
        if (n == 1) blas::sgemv_serial(true, T, hd, 1.f, Vg, kvd, s, 0.f, out);
        else blas::sgemm_serial(false, false, n, hd, T, 1.f, s, T, Vg, kvd, 0.f, out, q_dim_);
    };
    // One position over a short context is less work than handing it to the pool costs.
    if (int64_t(n) * T * q_dim_ < kParallelAttentionMacs)
        for (int h = 0; h < cfg_.n_heads; ++h) head(0, size_t(h));
    else
        threads::for_each_item(size_t(cfg_.n_heads), head);
}

void Decoder::forward(const int32_t* tokens, int n, float* logits, bool all_positions) {
    if (n < 1) throw std::invalid_argument("decoder: forward needs at least one token");
    if (n > context_ - pos_)
        throw std::length_error("decoder: " + std::to_string(n) + " more tokens do not fit the context of " +
                                std::to_string(context_) + " positions (" + std::to_string(pos_) +
                                " in use); reset() or make a decoder with a longer context");
    const int D = cfg_.dim, V = cfg_.vocab_size, H = cfg_.ffn_dim(), kvd = cfg_.kv_dim();
    for (int p = 0; p < n; ++p)
        if (tokens[p] < 0 || tokens[p] >= V)
            throw std::out_of_range("decoder: token id " + std::to_string(tokens[p]) + " at position " +
                                    std::to_string(p) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
    ensure_scratch(n);
    float *x = x_.data(), *xn = xn_.data();
    const size_t ND = size_t(n) * D;
    float rrms;  // rmsnorm_fwd's per-position statistic (unused here)
    auto rmsnorm = [&](const float* g, int first, int count) {
        for (int p = first; p < first + count; ++p)
            cpu::rmsnorm_fwd(x + size_t(p) * D, g, D, 1, cfg_.norm_eps, xn + size_t(p) * D, &rrms);
    };
    for (int p = 0; p < n; ++p)
        std::memcpy(x + size_t(p) * D, w_.tok_embeddings + size_t(tokens[p]) * D, size_t(D) * sizeof(float));
    for (int l = 0; l < cfg_.n_layers; ++l) {
        const DecoderWeights::Layer& W = w_.layers[size_t(l)];
        float* k = keys_.data() + (size_t(l) * context_ + pos_) * kvd;  // this call's rows of the cache
        float* v = values_.data() + (size_t(l) * context_ + pos_) * kvd;
        rmsnorm(W.attention_norm, 0, n);
        if (n == 1) {
            matvecs({{W.wq, q_dim_, q_.data()}, {W.wk, kvd, k}, {W.wv, kvd, v}}, D, xn);
        } else {
            linear(W.wq, q_dim_, D, xn, n, q_.data());
            linear(W.wk, kvd, D, xn, n, k);
            linear(W.wv, kvd, D, xn, n, v);
        }
        if (cfg_.qk_norm) {  // each head normalised with its gains before RoPE, as the kernels do
            head_norm(q_.data(), n, cfg_.n_heads, W.q_norm);
            head_norm(k, n, cfg_.kv_heads(), W.k_norm);
        }
        rope(q_.data(), n, cfg_.n_heads);
        rope(k, n, cfg_.kv_heads());
        attention(l, n);
        linear(W.wo, D, q_dim_, attn_.data(), n, xn);
        cpu::add(x, xn, x, ND);
        rmsnorm(W.ffn_norm, 0, n);
        float *h1 = h1_.data(), *h3 = h3_.data();
        auto gate = [&](size_t b, size_t e) {
            for (size_t i = b; i < e; ++i) h1[i] = h1[i] * sigmoid(h1[i]) * h3[i];  // as ffn_forward
        };
        if (n == 1) {  // w1 and w3 rows of a block, then their gate, in one parallel region
            threads::parallel_for(size_t(H), 16, [&](size_t b, size_t e) {
                blas::sgemv_serial(false, int(e - b), D, 1.f, W.w1 + b * D, D, xn, 0.f, h1 + b);
                blas::sgemv_serial(false, int(e - b), D, 1.f, W.w3 + b * D, D, xn, 0.f, h3 + b);
                gate(b, e);
            });
        } else {
            linear(W.w1, H, D, xn, n, h1);
            linear(W.w3, H, D, xn, n, h3);
            threads::parallel_for(size_t(n) * H, 16384, gate);
        }
        linear(W.w2, D, H, h1, n, xn);
        cpu::add(x, xn, x, ND);
    }
    const int first = all_positions ? 0 : n - 1, rows = n - first;
    rmsnorm(w_.norm, first, rows);
    linear(w_.output, V, D, xn + size_t(first) * D, rows, logits);
    pos_ += n;
}

}  // namespace anetrain::train
