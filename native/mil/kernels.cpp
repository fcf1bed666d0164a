#include "mil/kernels.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <stdexcept>

#include "core/fp16.h"
#include "mil/blob.h"

namespace anetrain::mil {

// The shape rules of the model config, defined here once: train::ModelConfig::validate calls this
// too, and the Python config calls that, so every layer refuses a shape with the same line.
void KernelShape::validate() const {
    auto bad = [](const std::string& m) { throw std::invalid_argument(m); };
    auto num = [](int64_t v) { return std::to_string(v); };
    if (dim <= 0) bad("dim must be positive (got " + num(dim) + ")");
    if (n_heads <= 0) bad("n_heads must be positive (got " + num(n_heads) + ")");
    if (head_dim < 0) bad("head_dim must be positive, or 0 for dim / n_heads (got " + num(head_dim) + ")");
    if (!head_dim && dim % n_heads)
        bad("dim " + num(dim) + " is not divisible by n_heads " + num(n_heads) +
            "; pick n_heads dividing dim, or give head_dim");
    if (head_size() % 2) {
        if (head_dim) bad("head_dim " + num(head_dim) + " must be even for RoPE's pairs");
        bad("head_dim " + num(head_size()) + " (dim " + num(dim) + " / n_heads " + num(n_heads) +
            ") must be even for RoPE's pairs; pick dim and n_heads whose quotient is even");
    }
    if (int64_t(n_heads) * head_size() > INT32_MAX)
        bad("n_heads " + num(n_heads) + " x head_dim " + num(head_size()) + " is too large (at most " + num(INT32_MAX) + ")");
    if (n_kv_heads <= 0 || n_kv_heads > n_heads)  // 0 is the config's spelling of n_heads
        bad("n_kv_heads must be 0 (= n_heads) or between 1 and n_heads " + num(n_heads) + " (got " +
            num(n_kv_heads) + ")");
    if (n_heads % n_kv_heads)
        bad("n_heads " + num(n_heads) + " is not a multiple of n_kv_heads " + num(n_kv_heads) +
            "; each key/value head must serve a whole group of query heads");
    if (hidden <= 0) bad("hidden_dim must be positive, or 0 for llama2.c's default (got " + num(hidden) + ")");
    if (seq <= 0) bad("seq_len must be positive (got " + num(seq) + ")");
    if (!(std::isfinite(rope_theta) && rope_theta > 0))
        bad("rope_theta must be a finite number > 0 (got " + std::to_string(rope_theta) + ")");
    if (!(std::isfinite(norm_eps) && norm_eps > 0))
        bad("norm_eps must be positive and finite (got " + std::to_string(norm_eps) + ")");
}

Pipeline pipeline_from_string(const std::string& s) {
    if (s == "static") return Pipeline::Static;
    if (s == "dynamic") return Pipeline::Dynamic;
    throw std::invalid_argument("unknown pipeline '" + s + "' (use static or dynamic)");
}

const std::vector<std::string>& layer_kernel_names() {
    static const std::vector<std::string> names{"attention_forward", "ffn_forward", "ffn_backward",
                                                "attention_backward"};
    return names;
}

namespace {

using Shape = std::vector<int64_t>;

// Writes one kernel: the builder plus the pieces every kernel shares (typed tensors, inputs and
// outputs in either program shape, linear layers in either pipeline, RoPE, the head layout,
// constant tables as blobs).
class KernelWriter {
public:
    KernelWriter(std::string name, const KernelShape& s, const KernelOptions& o)
        : s_(s), o_(o), b_(o.dialect), src_{std::move(name), "", {}, {}, {}, {}, {}} {
        s_.validate();
        if (o_.ane_shaped && o_.probs_tap)
            throw std::invalid_argument("probs_tap is not available in ANE-shaped programs (the ANE recomputes probs)");
        if (o_.ane_shaped && s_.seq % 32)
            throw std::invalid_argument("ANE-shaped programs need seq_len a multiple of 32 (64-byte I/O rows), got " +
                                        std::to_string(s_.seq));
    }

    Type T(const Shape& shape) const { return Type{o_.dtype, true, shape}; }
    Shape act(int64_t c) const { return {1, c, 1, s_.seq}; }

    // An activation input [1, c, 1, S] (split: any shape).
    std::string input(const std::string& name, const Shape& shape) {
        if (!o_.ane_shaped) {
            src_.inputs.push_back(name);
            shapes_[name] = shape;
            return b_.input(name, T(shape));
        }
        if (shape.size() != 4 || shape[0] != 1 || shape[2] != 1 || shape[3] != s_.seq)
            throw std::logic_error("ANE-shaped kernels take [1, C, 1, S] activations");
        return block(name, shape[1], s_.seq, name);
    }
    std::string input(const std::string& name, int64_t channels) { return input(name, act(channels)); }

    // The dynamic pipeline's weight W [out, in] as [1, 1, out, in] (llama2.c's row-major layout).
    std::string weight(const std::string& name, int64_t out, int64_t in) {
        if (!o_.ane_shaped) {
            src_.inputs.push_back(name);
            shapes_[name] = {1, 1, out, in};
            return b_.input(name, T({1, 1, out, in}));
        }
        pending_reshapes_.push_back({name, {1, 1, out, in}});
        return block(name, out, in, name + "_block");
    }

    void output(const std::string& name) {
        if (o_.ane_shaped) {
            results_.push_back(name);
            return;
        }
        src_.outputs.push_back(name);
        b_.output(name);
    }

    std::string op(const std::string& out, const Shape& shape, const std::string& type, const Args& args) {
        seal_input();
        shapes_[out] = shape;
        return b_.op(out, T(shape), type, args);
    }
    std::string reshape(const std::string& out, const std::string& x, const Shape& shape) {
        return op(out, shape, "reshape", {{"x", x}, {"shape", ints(shape)}});
    }
    std::string slice(const std::string& out, const std::string& x, const Shape& begin, const Shape& size) {
        return op(out, size, "slice_by_size", {{"x", x}, {"begin", ints(begin)}, {"size", ints(size)}});
    }
    std::string concat(const std::string& out, const Shape& shape, int axis, const std::vector<std::string>& values) {
        seal_input();
        shapes_[out] = shape;
        return b_.op(out, T(shape), "concat", {{"axis", int32(axis)}, {"interleave", boolean(false)}}, "values",
                     Tuple{values});
    }
    std::string binary(const std::string& out, const Shape& shape, const std::string& type, const std::string& x,
                       const Operand& y) {
        return op(out, shape, type, {{"x", x}, {"y", y}});
    }
    Operand scalar(double v) const { return o_.dtype == DType::fp16 ? fp16(v) : fp32(v); }

    // A constant table stored as its own blob file (per-matrix files work on every chip).
    std::string table(const std::string& name, const Shape& shape, const std::vector<float>& values) {
        const std::string path = "@model_path/weights/" + name + ".bin";
        std::vector<uint64_t> offsets;
        if (o_.dtype == DType::fp16) {
            std::vector<uint16_t> h(values.size());
            fp16::f32_to_f16(values.data(), h.data(), values.size());
            src_.blobs[path] = blob::write({{DType::fp16, h.data(), h.size() * 2}}, &offsets);
        } else {
            src_.blobs[path] = blob::write({{DType::fp32, values.data(), values.size() * 4}}, &offsets);
        }
        shapes_[name] = shape;
        return b_.weight(name, T(shape), path, offsets[0]);
    }

    // y = W x (transpose=false) or y = W^T x (transpose=true) for W [out, in] and x [1, C, 1, S].
    // Static: W (or W^T) baked as a conv weight. Dynamic: `w` names the weight from weight().
    std::string linear(const std::string& y, const std::string& x, const std::string& w, int64_t out, int64_t in,
                       const float* weights, bool transpose) {
        const int64_t oc = transpose ? in : out, ic = transpose ? out : in;
        if (o_.pipeline == Pipeline::Static) {
            if (!weights) throw std::invalid_argument("static kernels need the layer's weights to bake");
            std::vector<float> baked(size_t(out * in));
            if (transpose) {
                for (int64_t r = 0; r < out; ++r)
                    for (int64_t c = 0; c < in; ++c) baked[size_t(c * out + r)] = weights[r * in + c];
            } else {
                baked.assign(weights, weights + out * in);
            }
            const std::string wname = w + (transpose ? "_t" : "");
            const std::string wc = table(wname, {oc, ic, 1, 1}, baked);
            return op(y, act(oc), "conv",
                      {{"x", x}, {"weight", wc}, {"strides", ints({1, 1})}, {"pad_type", str("valid")},
                       {"pad", ints({0, 0, 0, 0})}, {"dilations", ints({1, 1})}, {"groups", int32(1)}});
        }
        const std::string x4 = reshape(y + "_in", x, {1, 1, ic, s_.seq});
        const std::string y4 = op(y + "_mm", {1, 1, oc, s_.seq}, "matmul",
                                  {{"x", w}, {"y", x4}, {"transpose_x", boolean(transpose)}, {"transpose_y", boolean(false)}});
        return reshape(y, y4, act(oc));
    }

    // RoPE on adjacent pairs within each head of x [1, heads*hd, 1, S]: out[2i] = x[2i] cos - x[2i+1] sin,
    // out[2i+1] = x[2i+1] cos + x[2i] sin. inverse=true rotates back (the backward pass). Pairs are
    // [1, heads*hd/2, 2, S]; the tables hold each head's angles, so no op broadcasts over heads.
    std::string rope(const std::string& y, const std::string& x, int heads, bool inverse) {
        const int64_t hd = s_.head_size(), half = hd / 2, S = s_.seq, rows = heads * half;
        auto& tables = rope_tables_[heads];
        if (tables.first.empty()) {
            std::vector<float> c(size_t(rows * S)), sn(size_t(rows * S));
            for (int64_t p = 0; p < half; ++p) {
                const double freq = std::pow(s_.rope_theta, -2.0 * double(p) / double(hd));
                for (int64_t t = 0; t < S; ++t) {
                    const double angle = double(t) * freq;  // in double, like the CPU ops' RoPE table
                    for (int64_t h = 0; h < heads; ++h) {
                        c[size_t((h * half + p) * S + t)] = float(std::cos(angle));
                        sn[size_t((h * half + p) * S + t)] = float(std::sin(angle));
                    }
                }
            }
            const std::string suffix = "_" + std::to_string(heads);
            tables.first = table("rope_cos" + suffix, {1, rows, 1, S}, c);
            tables.second = table("rope_sin" + suffix, {1, rows, 1, S}, sn);
        }
        const std::string &cos = tables.first, &sin = tables.second;
        const Shape pairs{1, rows, 2, S}, one{1, rows, 1, S};
        const std::string xp = reshape(y + "_pairs", x, pairs);
        const std::string e = slice(y + "_even", xp, {0, 0, 0, 0}, one);
        const std::string od = slice(y + "_odd", xp, {0, 0, 1, 0}, one);
        const std::string ec = binary(y + "_ec", one, "mul", e, cos), es = binary(y + "_es", one, "mul", e, sin);
        const std::string oc = binary(y + "_oc", one, "mul", od, cos), os = binary(y + "_os", one, "mul", od, sin);
        // forward: (e cos - o sin, o cos + e sin); inverse: (e cos + o sin, o cos - e sin)
        const std::string re = binary(y + "_re", one, inverse ? "add" : "sub", ec, os);
        const std::string ro = binary(y + "_ro", one, inverse ? "sub" : "add", oc, es);
        const std::string cat = concat(y + "_rot", pairs, 2, {re, ro});
        return reshape(y, cat, act(rows * 2));
    }

    // Head layouts. Query heads: ANE [1, H, hd, S]; split [KVH, rep, hd, S]. K/V heads: ANE
    // [1, KVH, hd, S]; split [KVH, 1, hd, S]. Scores: ANE [1, H, S, S]; split [KVH, rep, S, S].
    Shape q_heads() const { return o_.ane_shaped ? Shape{1, s_.n_heads, hd(), s_.seq} : Shape{kvh(), rep(), hd(), s_.seq}; }
    Shape kv_heads() const { return o_.ane_shaped ? Shape{1, kvh(), hd(), s_.seq} : Shape{kvh(), 1, hd(), s_.seq}; }
    Shape scores() const { return o_.ane_shaped ? Shape{1, s_.n_heads, s_.seq, s_.seq} : Shape{kvh(), rep(), s_.seq, s_.seq}; }
    Shape head_rows(int heads) const { return {1, heads, hd(), s_.seq}; }
    std::string heads_q(const std::string& y, const std::string& x) { return reshape(y, x, q_heads()); }
    std::string heads_kv(const std::string& y, const std::string& x) { return reshape(y, x, kv_heads()); }
    std::string flat(const std::string& y, const std::string& x, int64_t c) { return reshape(y, x, act(c)); }

    // K/V heads as the query heads see them: query head h reads KV head h / rep. Split: matmul
    // broadcasts over the rep axis. ANE: each KV head is repeated rep times on axis 1.
    std::string repeat_kv(const std::string& y, const std::string& x4) {
        if (!o_.ane_shaped || rep() == 1) return x4;
        const Shape one{1, 1, hd(), s_.seq};
        std::vector<std::string> parts;
        for (int g = 0; g < kvh(); ++g) {
            const std::string head = slice(y + "_h" + std::to_string(g), x4, {0, g, 0, 0}, one);
            parts.insert(parts.end(), size_t(rep()), head);
        }
        return concat(y, q_heads(), 1, parts);
    }

    // The inverse of repeat_kv for gradients: the sum over each KV head's rep query heads.
    std::string sum_groups(const std::string& y, const std::string& x) {
        if (rep() == 1) return x;
        if (!o_.ane_shaped)
            return op(y, kv_heads(), "reduce_sum", {{"x", x}, {"axes", ints({1})}, {"keep_dims", boolean(true)}});
        const Shape one{1, 1, hd(), s_.seq};
        std::vector<std::string> sums;
        for (int g = 0; g < kvh(); ++g) {
            const std::string base = y + "_g" + std::to_string(g);
            std::string acc = slice(base + "_r0", x, {0, g * rep(), 0, 0}, one);
            for (int r = 1; r < rep(); ++r) {
                const std::string term = slice(base + "_r" + std::to_string(r), x, {0, g * rep() + r, 0, 0}, one);
                acc = binary(r + 1 == rep() && kvh() == 1 ? y : base + "_s" + std::to_string(r), one, "add", acc, term);
            }
            sums.push_back(acc);
        }
        return kvh() == 1 ? sums[0] : concat(y, kv_heads(), 1, sums);
    }

    // QK-norm gains [1, 1, hd, 1]: baked (static) or the input weight `name` (dynamic, declared with
    // weight(name, hd, 1) before the first op).
    std::string gains(const std::string& name, const float* values) {
        if (!is_static()) return name;
        if (!values) throw std::invalid_argument("static kernels need the layer's weights to bake");
        return table(name, {1, 1, hd(), 1}, std::vector<float>(values, values + hd()));
    }

    // RMSNorm of each head of x [1, heads*hd, 1, S] over its hd channels (QK-norm), heads as
    // [1, heads, hd, S]: x4 the input, rrms [1, heads, 1, S], xhat = x4 rrms, y = xhat g flat (g the
    // gains from gains()).
    struct HeadNorm {
        std::string g, x4, rrms, xhat, y;
        int heads = 0;
    };
    HeadNorm head_norm(const std::string& y, const std::string& x, int heads, const std::string& g) {
        const Shape h4 = head_rows(heads), col{1, heads, 1, s_.seq};
        HeadNorm n{g, reshape(y + "_heads", x, h4), "", "", "", heads};
        // The mean square of x 2^-e (times hd 2^-2e back): with 2^e about sqrt(hd) the fp16 sum of
        // squares stays finite up to an RMS of about 256, and powers of two round nothing.
        const int e = int(std::ceil(std::log2(double(hd())) / 2));
        const double pre = std::ldexp(1.0, -e), post = 1.0 / (double(hd()) * pre * pre);
        const std::string xs = binary(y + "_scaled", h4, "mul", n.x4, scalar(pre));
        const std::string sq = binary(y + "_sq", h4, "mul", xs, xs);
        std::string ms = op(y + "_ss", col, "reduce_sum", {{"x", sq}, {"axes", ints({2})}, {"keep_dims", boolean(true)}});
        if (post != 1.0) ms = binary(y + "_ms", col, "mul", ms, scalar(post));
        const std::string me = binary(y + "_ms_eps", col, "add", ms, scalar(s_.norm_eps));
        n.rrms = binary(y + "_rrms", col, "pow", me, scalar(-0.5));
        n.xhat = binary(y + "_xhat", h4, "mul", n.x4, n.rrms);
        n.y = flat(y, binary(y + "_y4", h4, "mul", n.xhat, g), heads * hd());
        return n;
    }

    // The backward of head_norm for dy (flat like its y): returns dx (flat, named dx) and, named
    // dg, the gains' gradient summed over the heads, [1, hd, 1, S] (one column per position):
    //   dxhat = g dy;  dx = rrms (dxhat - xhat mean_hd(dxhat xhat));  dg = sum_heads dy xhat
    std::string head_norm_backward(const std::string& dx, const std::string& dg, const std::string& dy,
                                   const HeadNorm& n) {
        const Shape h4 = head_rows(n.heads), col{1, n.heads, 1, s_.seq};
        const std::string dy4 = reshape(dx + "_dy4", dy, h4);
        const std::string dxhat = binary(dx + "_dxhat", h4, "mul", dy4, n.g);
        const std::string p = binary(dx + "_p", h4, "mul", dxhat, n.xhat);
        // scaled before the sum, so the fp16 sum is of mean size
        const std::string ps = binary(dx + "_p_mean", h4, "mul", p, scalar(1.0 / double(hd())));
        const std::string m = op(dx + "_mean", col, "reduce_sum", {{"x", ps}, {"axes", ints({2})}, {"keep_dims", boolean(true)}});
        const std::string t = binary(dx + "_xhat_mean", h4, "mul", n.xhat, m);
        const std::string u = binary(dx + "_centred", h4, "sub", dxhat, t);
        const std::string dx4 = binary(dx + "_4", h4, "mul", u, n.rrms);
        const std::string out = flat(dx, dx4, n.heads * hd());
        const std::string dgh = binary(dg + "_heads", h4, "mul", dy4, n.xhat);
        const std::string dgs = n.heads == 1 ? dgh
                                             : op(dg + "_sum", {1, 1, hd(), s_.seq}, "reduce_sum",
                                                  {{"x", dgh}, {"axes", ints({1})}, {"keep_dims", boolean(true)}});
        reshape(dg, dgs, act(hd()));
        return out;
    }

    // probs = softmax(q^T k * scale + causal mask) for q in query heads and k as repeat_kv gives it.
    std::string attention_probs(const std::string& q4, const std::string& k4) {
        const int64_t S = s_.seq;
        const Shape sc = scores();
        std::vector<float> mask(size_t(S * S));
        for (int64_t i = 0; i < S; ++i)
            for (int64_t j = 0; j < S; ++j) mask[size_t(i * S + j)] = j <= i ? 0.f : -65504.f;
        const std::string m = table("causal_mask", {1, 1, S, S}, mask);
        const std::string raw = op("scores", sc, "matmul",
                                   {{"x", q4}, {"y", k4}, {"transpose_x", boolean(true)}, {"transpose_y", boolean(false)}});
        const std::string scaled = binary("scores_scaled", sc, "mul", raw, scalar(1.0 / std::sqrt(double(hd()))));
        const std::string masked = binary("scores_masked", sc, "add", scaled, m);
        return op("probs", sc, "softmax", {{"x", masked}, {"axis", int32(-1)}});
    }

    int rep() const { return s_.n_heads / s_.n_kv_heads; }
    int kvh() const { return s_.n_kv_heads; }
    int64_t hd() const { return s_.head_size(); }
    bool is_static() const { return o_.pipeline == Pipeline::Static; }

    KernelSource finish() {
        if (o_.ane_shaped) {
            seal_input();
            int64_t channels = 0;
            for (const std::string& r : results_) {
                const Shape& sh = shapes_.at(r);
                src_.output_layout.push_back({r, channels, 0, sh[1], sh[3]});
                channels += sh[1];
            }
            const std::string out = results_.size() == 1 ? results_[0] : concat("out", act(channels), 1, results_);
            src_.outputs.push_back(out);
            b_.output(out);
        }
        src_.text = b_.text();
        return std::move(src_);
    }

private:
    // ANE shape: record a block of the one input, to be sliced out under `var` once every block is known.
    std::string block(const std::string& name, int64_t rows, int64_t cols, const std::string& var) {
        if (sealed_) throw std::logic_error("kernel inputs must be declared before the first op");
        const int64_t column = src_.input_layout.empty() ? 0 : src_.input_layout.back().column + src_.input_layout.back().columns;
        src_.input_layout.push_back({name, 0, column, rows, cols});
        slice_names_.push_back(var);
        return name;
    }

    // ANE shape: declare the one input [1, C, 1, W] (C the tallest block, W the blocks' total width
    // rounded up to 64-byte rows) and slice each block out of it.
    void seal_input() {
        if (!o_.ane_shaped || sealed_) return;
        sealed_ = true;
        if (src_.input_layout.empty()) return;
        int64_t channels = 0;
        for (const Block& bl : src_.input_layout) channels = std::max(channels, bl.channels);
        const Block& last = src_.input_layout.back();
        const int64_t width = (last.column + last.columns + 31) / 32 * 32;
        const std::string x = "x";
        src_.inputs.push_back(x);
        b_.input(x, T({1, channels, 1, width}));
        for (size_t i = 0; i < src_.input_layout.size(); ++i) {
            const Block& bl = src_.input_layout[i];
            slice(slice_names_[i], x, {0, 0, 0, bl.column}, {1, bl.channels, 1, bl.columns});
        }
        for (const auto& [name, shape] : pending_reshapes_) reshape(name, name + "_block", shape);
    }

    KernelShape s_;
    KernelOptions o_;
    Builder b_;
    KernelSource src_;
    std::map<std::string, Shape> shapes_;                     // every tensor's shape, by name
    std::map<int, std::pair<std::string, std::string>> rope_tables_;  // heads -> (cos, sin)
    // ANE shape
    bool sealed_ = false;
    std::vector<std::string> slice_names_, results_;
    std::vector<std::pair<std::string, Shape>> pending_reshapes_;
};

const float* weight_of(const LayerWeights* w, const float* LayerWeights::*field) { return w ? w->*field : nullptr; }

// The attention kernels' weights as dynamic inputs, in this order (nothing for the static pipeline).
void declare_attention_weights(KernelWriter& k, const KernelShape& s) {
    if (k.is_static()) return;
    const int64_t D = s.dim, QD = s.q_dim(), KD = s.kv_dim();
    k.weight("wq", QD, D), k.weight("wk", KD, D), k.weight("wv", KD, D), k.weight("wo", D, QD);
    if (s.qk_norm) k.weight("q_norm", s.head_size(), 1), k.weight("k_norm", s.head_size(), 1);
}

// QK-norm of the projection x ("q" or "k", heads heads) with that head's gains.
KernelWriter::HeadNorm qk_normed(KernelWriter& k, const std::string& which, const std::string& x, int heads,
                                 const LayerWeights* w) {
    const std::string g = k.gains(which + "_norm", weight_of(w, which == "q" ? &LayerWeights::q_norm : &LayerWeights::k_norm));
    return k.head_norm(which + "_normed", x, heads, g);
}

}  // namespace

KernelSource attention_forward(const KernelShape& s, const KernelOptions& o, const LayerWeights* w) {
    KernelWriter k("attention_forward", s, o);
    const int64_t D = s.dim, QD = s.q_dim(), KD = s.kv_dim();
    const std::string xn = k.input("xn", D);
    declare_attention_weights(k, s);
    // With QK-norm the results q, k are the projections (see the top of kernels.h).
    const bool qkn = s.qk_norm;
    const std::string q0 = k.linear(qkn ? "q" : "q_lin", xn, "wq", QD, D, weight_of(w, &LayerWeights::wq), false);
    const std::string k0 = k.linear(qkn ? "k" : "k_lin", xn, "wk", KD, D, weight_of(w, &LayerWeights::wk), false);
    const std::string v = k.linear("v", xn, "wv", KD, D, weight_of(w, &LayerWeights::wv), false);
    const std::string qr = qkn ? qk_normed(k, "q", q0, s.n_heads, w).y : q0;
    const std::string kn = qkn ? qk_normed(k, "k", k0, s.n_kv_heads, w).y : k0;
    const std::string q = k.rope(qkn ? "q_roped" : "q", qr, s.n_heads, false);
    const std::string kr = k.rope(qkn ? "k_roped" : "k", kn, s.n_kv_heads, false);
    const std::string q4 = k.heads_q("q4", q);
    const std::string k4 = k.repeat_kv("k_rep", k.heads_kv("k4", kr));
    const std::string v4 = k.repeat_kv("v_rep", k.heads_kv("v4", v));
    const std::string probs = k.attention_probs(q4, k4);
    const std::string a4 = k.op("attn4", k.q_heads(), "matmul",
                                {{"x", v4}, {"y", probs}, {"transpose_x", boolean(false)}, {"transpose_y", boolean(true)}});
    const std::string attn = k.flat("attn", a4, QD);
    const std::string out = k.linear("o", attn, "wo", D, QD, weight_of(w, &LayerWeights::wo), false);
    for (const auto& n : {out, qkn ? q0 : q, qkn ? k0 : kr, v, attn}) k.output(n);
    if (o.probs_tap) k.output(probs);
    return k.finish();
}

KernelSource ffn_forward(const KernelShape& s, const KernelOptions& o, const LayerWeights* w) {
    KernelWriter k("ffn_forward", s, o);
    const int64_t D = s.dim, H = s.hidden;
    const std::string x = k.input("x2n", D);
    if (!k.is_static()) k.weight("w1", H, D), k.weight("w3", H, D), k.weight("w2", D, H);
    const std::string h1 = k.linear("h1", x, "w1", H, D, weight_of(w, &LayerWeights::w1), false);
    const std::string h3 = k.linear("h3", x, "w3", H, D, weight_of(w, &LayerWeights::w3), false);
    const std::string sig = k.op("sig", k.act(H), "sigmoid", {{"x", h1}});
    const std::string silu = k.binary("silu", k.act(H), "mul", h1, sig);
    const std::string gate = k.binary("gate", k.act(H), "mul", silu, h3);
    const std::string f = k.linear("f", gate, "w2", D, H, weight_of(w, &LayerWeights::w2), false);
    for (const auto& n : {f, h1, h3, gate}) k.output(n);
    return k.finish();
}

KernelSource ffn_backward(const KernelShape& s, const KernelOptions& o, const LayerWeights* w) {
    KernelWriter k("ffn_backward", s, o);
    const int64_t D = s.dim, H = s.hidden;
    const std::string df = k.input("df", D);
    const std::string h1 = k.input("h1", H);
    const std::string h3 = k.input("h3", H);
    if (!k.is_static()) k.weight("w1", H, D), k.weight("w3", H, D), k.weight("w2", D, H);
    const Shape a = k.act(H);
    const std::string dgate = k.linear("dgate", df, "w2", D, H, weight_of(w, &LayerWeights::w2), true);
    const std::string sig = k.op("sig", a, "sigmoid", {{"x", h1}});
    const std::string silu = k.binary("silu", a, "mul", h1, sig);
    const std::string dh3 = k.binary("dh3", a, "mul", dgate, silu);
    const std::string dsilu = k.binary("dsilu", a, "mul", dgate, h3);
    // silu'(h) = sig (1 + h (1 - sig))
    const std::string one_minus = k.op("one_minus_sig", a, "sub", {{"x", k.scalar(1.0)}, {"y", sig}});
    const std::string hs = k.binary("h_one_minus_sig", a, "mul", h1, one_minus);
    const std::string inner = k.binary("dsilu_inner", a, "add", hs, k.scalar(1.0));
    const std::string deriv = k.binary("silu_deriv", a, "mul", sig, inner);
    const std::string dh1 = k.binary("dh1", a, "mul", dsilu, deriv);
    const std::string dx1 = k.linear("dx_w1", dh1, "w1", H, D, weight_of(w, &LayerWeights::w1), true);
    const std::string dx3 = k.linear("dx_w3", dh3, "w3", H, D, weight_of(w, &LayerWeights::w3), true);
    const std::string dx = k.binary("dx2n", k.act(D), "add", dx1, dx3);
    for (const auto& n : {dx, dh1, dh3}) k.output(n);
    return k.finish();
}

KernelSource attention_backward(const KernelShape& s, const KernelOptions& o, const LayerWeights* w) {
    KernelWriter k("attention_backward", s, o);
    const int64_t D = s.dim, QD = s.q_dim(), KD = s.kv_dim(), hd = s.head_size();
    const std::string dout = k.input("dout", D);
    const std::string q_in = k.input("q", QD);
    const std::string k_in = k.input("k", KD);
    const std::string v = k.input("v", KD);
    const Shape grp = k.q_heads(), sc = k.scores();
    const std::string probs_in = o.probs_tap ? k.input("probs", sc) : "";
    declare_attention_weights(k, s);
    // With QK-norm q and k are the projections: the norm and RoPE are recomputed from them.
    KernelWriter::HeadNorm qn, kn;
    if (s.qk_norm) qn = qk_normed(k, "q", q_in, s.n_heads, w), kn = qk_normed(k, "k", k_in, s.n_kv_heads, w);
    const std::string q = s.qk_norm ? k.rope("q_roped", qn.y, s.n_heads, false) : q_in;
    const std::string kr = s.qk_norm ? k.rope("k_roped", kn.y, s.n_kv_heads, false) : k_in;
    const std::string da = k.linear("da", dout, "wo", D, QD, weight_of(w, &LayerWeights::wo), true);
    const std::string q4 = k.heads_q("q4", q), da4 = k.heads_q("da4", da);
    const std::string k4 = k.repeat_kv("k_rep", k.heads_kv("k4", kr));
    const std::string v4 = k.repeat_kv("v_rep", k.heads_kv("v4", v));
    const std::string probs = o.probs_tap ? probs_in : k.attention_probs(q4, k4);
    // attn = v probs^T  =>  dv = da probs, dprobs = da^T v
    const std::string dv4 = k.op("dv_group", grp, "matmul",
                                 {{"x", da4}, {"y", probs}, {"transpose_x", boolean(false)}, {"transpose_y", boolean(false)}});
    const std::string dp = k.op("dprobs", sc, "matmul",
                                {{"x", da4}, {"y", v4}, {"transpose_x", boolean(true)}, {"transpose_y", boolean(false)}});
    // softmax backward: ds = p (dp - sum_j p dp), then the score scale
    Shape rows_shape = sc;
    rows_shape[3] = 1;
    const std::string pdp = k.binary("p_dp", sc, "mul", probs, dp);
    const std::string rows = k.op("p_dp_rows", rows_shape, "reduce_sum",
                                  {{"x", pdp}, {"axes", ints({-1})}, {"keep_dims", boolean(true)}});
    const std::string centred = k.binary("dp_centred", sc, "sub", dp, rows);
    const std::string ds0 = k.binary("dscores_raw", sc, "mul", probs, centred);
    const std::string ds = k.binary("dscores", sc, "mul", ds0, k.scalar(1.0 / std::sqrt(double(hd))));
    // scores = q^T k  =>  dq = k ds^T, dk = q ds
    const std::string dq4 = k.op("dq4", grp, "matmul",
                                 {{"x", k4}, {"y", ds}, {"transpose_x", boolean(false)}, {"transpose_y", boolean(true)}});
    const std::string dk4 = k.op("dk_group", grp, "matmul",
                                 {{"x", q4}, {"y", ds}, {"transpose_x", boolean(false)}, {"transpose_y", boolean(false)}});
    const std::string dq_rot = k.flat("dq_roped", dq4, QD);
    const std::string dk_rot = k.flat("dk_roped", k.sum_groups("dk4", dk4), KD);
    const std::string dv = k.flat("dv", k.sum_groups("dv4", dv4), KD);
    std::string dq = k.rope(s.qk_norm ? "dq_normed" : "dq", dq_rot, s.n_heads, true);
    std::string dk = k.rope(s.qk_norm ? "dk_normed" : "dk", dk_rot, s.n_kv_heads, true);
    if (s.qk_norm) {
        dq = k.head_norm_backward("dq", "dq_norm", dq, qn);
        dk = k.head_norm_backward("dk", "dk_norm", dk, kn);
    }
    const std::string dxq = k.linear("dx_q", dq, "wq", QD, D, weight_of(w, &LayerWeights::wq), true);
    const std::string dxk = k.linear("dx_k", dk, "wk", KD, D, weight_of(w, &LayerWeights::wk), true);
    const std::string dxv = k.linear("dx_v", dv, "wv", KD, D, weight_of(w, &LayerWeights::wv), true);
    const std::string dxqk = k.binary("dx_qk", k.act(D), "add", dxq, dxk);
    const std::string dxn = k.binary("dxn", k.act(D), "add", dxqk, dxv);
    for (const auto& n : {dxn, dq, dk, dv}) k.output(n);
    if (s.qk_norm) k.output("dq_norm"), k.output("dk_norm");
    return k.finish();
}

std::vector<KernelSource> layer_kernels(const KernelShape& s, const KernelOptions& o, const LayerWeights* w) {
    return {attention_forward(s, o, w), ffn_forward(s, o, w), ffn_backward(s, o, w), attention_backward(s, o, w)};
}

}  // namespace anetrain::mil
