#include "train/trainer.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>

#include "core/blas.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "core/timer.h"

namespace anetrain::train {
namespace {

// llama2.c's name of a layer weight the kernels call wq..wo / w1..w3 (and q_norm, k_norm).
std::string layer_weight_name(int layer, const std::string& n) {
    const bool ffn = n == "w1" || n == "w2" || n == "w3";
    return "layers." + std::to_string(layer) + (ffn ? ".feed_forward." : ".attention.") + n;
}

}  // namespace

// Activations of one layer for the sequence in flight, and the gradients the dW jobs read.
// Each kernel writes its results into one buffer, results consecutive on the channel axis (the
// order of the kernel's outputs, which is also the ANE-shaped output's concat order); the named
// pointers are views into those buffers.
struct Trainer::LayerActs {
    std::vector<float> x, rrms1, xn, x2, rrms2, x2n, df, dx2, probs;
    std::vector<float> attn_fwd, ffn_fwd, ffn_bwd, attn_bwd;  // the kernels' results
    float *o, *q, *k, *v, *attn;  // attention_forward
    float *f, *h1, *h3, *gate;    // ffn_forward
    float *dx2n, *dh1, *dh3;      // ffn_backward
    float *dxn, *dq, *dk, *dv;    // attention_backward
    float *dq_norm = nullptr, *dk_norm = nullptr;  // and with QK-norm: the gains' gradients per position
    LayerActs(const ModelConfig& c, bool probs_tap) {
        const size_t S = size_t(c.seq_len), D = size_t(c.dim), QD = size_t(c.q_dim()), KV = size_t(c.kv_dim()),
                     H = size_t(c.ffn_dim()), HD = c.qk_norm ? size_t(c.head_size()) : 0;
        if (probs_tap) probs.resize(size_t(c.n_heads) * S * S);
        for (auto* b : {&x, &xn, &x2, &x2n, &df, &dx2}) b->resize(D * S);
        rrms1.resize(S);
        rrms2.resize(S);
        views(attn_fwd, S, {{&o, D}, {&q, QD}, {&k, KV}, {&v, KV}, {&attn, QD}});
        views(ffn_fwd, S, {{&f, D}, {&h1, H}, {&h3, H}, {&gate, H}});
        views(ffn_bwd, S, {{&dx2n, D}, {&dh1, H}, {&dh3, H}});
        views(attn_bwd, S, {{&dxn, D}, {&dq, QD}, {&dk, KV}, {&dv, KV}, {&dq_norm, HD}, {&dk_norm, HD}});
    }

private:
    static void views(std::vector<float>& buf, size_t S, std::initializer_list<std::pair<float**, size_t>> parts) {
        size_t n = 0;
        for (const auto& p : parts) n += p.second * S;
        buf.resize(n);
        float* at = buf.data();
        for (const auto& p : parts) *p.first = at, at += p.second * S;
    }
};

struct Trainer::LayerKernels {
    std::map<std::string, std::unique_ptr<backend::Kernel>> kernels;  // by kernel name
    std::map<std::string, mil::KernelSource> sources;                 // their programs, without text and blobs
    // per kernel, the weights among its inputs (split programs: the inputs after the activations)
    std::map<std::string, std::vector<Params::Field>> weight_inputs;
};

// An ANE-shaped kernel's one input, [channels][width] fp16, and the blocks that make it up.
// Passed to the kernel as a reused buffer (HostTensor::reuse_id): after the first evaluation and
// after each weight staging everything is new, otherwise only the activation columns.
struct Trainer::PackedInput {
    std::vector<mil::Block> blocks;
    std::vector<Params::Field> block_weights;  // per block: its weight, or nullptr for an activation
    int64_t width = 0;
    std::vector<uint16_t> data;
    uint64_t id = 0;
    bool all_new = true;
    std::vector<std::pair<int64_t, int64_t>> activation_columns;  // merged ranges
};

namespace {
uint64_t next_packed_id() {
    static std::atomic<uint64_t> n{0};
    return ++n;
}
}  // namespace

Trainer::Trainer(const ModelConfig& cfg, std::shared_ptr<backend::Backend> backend, const TrainerOptions& opt)
    : state_(cfg), backend_(std::move(backend)), opt_(opt) {
    if (!backend_) throw std::invalid_argument("Trainer needs a backend");
    w_ = resolve(state_.weights);
    g_ = resolve(state_.grads);
    const ModelConfig& c = state_.config();
    auto range = [&](const std::string& first, const std::string& last) {
        const ParamSlot &a = state_.slot(first), &b = state_.slot(last);
        return std::make_pair(a.offset, b.offset + size_t(b.spec.numel()) - a.offset);
    };
    for (int l = 0; l < c.n_layers; ++l) {  // a layer's tensors are consecutive (param_specs)
        const std::string pre = "layers." + std::to_string(l) + ".";
        layer_grads_.push_back(range(pre + "attention.wq", pre + (c.qk_norm ? "attention.k_norm" : "ffn_norm")));
    }
    // the final norm and, untied, the classifier after it: both done once the classifier's backward is
    norm_grads_ = range("norm", c.tie_embeddings ? "norm" : "output");
    embedding_grads_ = range("tok_embeddings", "tok_embeddings");
    size_t covered = 0;
    for (const auto& r : grads_ready_ranges()) covered += r.second;
    if (covered != state_.size())  // every gradient is handed over exactly once
        throw std::logic_error("Trainer: the gradient ranges cover " + std::to_string(covered) + " of " +
                               std::to_string(state_.size()) + " values");
    shape_ = c.kernel_shape();  // ModelState validated the config
    kernel_options_.pipeline = mil::pipeline_from_string(opt_.pipeline);
    if (opt_.precision == "fp16") {
        kernel_options_.dtype = mil::DType::fp16;
    } else if (opt_.precision == "fp32") {
        if (backend_->name() != "ref")
            throw std::invalid_argument("precision fp32 runs only on the ref backend (the " + backend_->name() +
                                        " backend computes in fp16)");
        kernel_options_.dtype = mil::DType::fp32;
    } else {
        throw std::invalid_argument("unknown precision '" + opt_.precision + "' (use fp16 or fp32)");
    }
    kernel_options_.dialect = mil::Dialect::from_string(opt_.dialect);
    kernel_options_.ane_shaped = opt_.ane_shaped < 0 ? backend_->name() == "ane" : opt_.ane_shaped > 0;
    // The tap is a split-program feature; the ANE-shaped programs recompute probs as the ANE does.
    kernel_options_.probs_tap = !kernel_options_.ane_shaped && (opt_.probs_tap < 0 ? backend_->name() == "ref" : opt_.probs_tap > 0);
    if (kernel_options_.ane_shaped && kernel_options_.dtype != mil::DType::fp16)
        throw std::invalid_argument("ANE-shaped programs are fp16 (precision fp32 needs the split programs)");
    if (kernel_options_.ane_shaped && c.seq_len % 32)
        throw std::invalid_argument("the ANE runs seq_len in multiples of 32 (64-byte rows); got seq_len " +
                                    std::to_string(c.seq_len));
    if (!(opt_.loss_scale > 0.f)) throw std::invalid_argument("loss_scale must be positive");
    for (int l = 0; l < c.n_layers; ++l) acts_.push_back(std::make_unique<LayerActs>(c, kernel_options_.probs_tap));
    if (kernel_options_.ane_shaped) packed_.resize(size_t(c.n_layers)), staged_version_.assign(size_t(c.n_layers), ~uint64_t(0));
    const size_t D = size_t(c.dim), S = size_t(c.seq_len);
    x_.resize(D * S);
    x_final_.resize(D * S);
    rrms_final_.resize(S);
    dx_.resize(D * S);
    tmp_.resize(D * S);
    logits_.resize(size_t(c.vocab_size) * S);
    rounded_weights_ = kernel_options_.pipeline == mil::Pipeline::Dynamic && kernel_options_.dtype == mil::DType::fp16 &&
                       !kernel_options_.ane_shaped && backend_->name() == "ref" && c.n_layers > 0;
    if (rounded_weights_) state_.keep_rounded(state_.slot(layer_weight_name(0, "wq")).offset, state_.slot("norm").offset);
    const bool overlap = opt_.overlap_dw < 0 ? backend_->name() != "ref" : opt_.overlap_dw > 0;
    dw_ = std::make_unique<threads::SerialQueue>(overlap, timings_.dw);
}

Trainer::~Trainer() = default;

int Trainer::compiles_needed() const {
    const int per_set = int(mil::layer_kernel_names().size());
    if (kernel_options_.pipeline == mil::Pipeline::Dynamic) return kernels_.empty() ? per_set : 0;
    return static_kernels_current() ? 0 : per_set * config().n_layers;
}

int Trainer::compiles_after_update() const {
    if (kernel_options_.pipeline == mil::Pipeline::Dynamic) return 0;
    return int(mil::layer_kernel_names().size()) * config().n_layers;
}

bool Trainer::static_kernels_current() const {
    // Weights behind a live view may have changed unseen: rebuild every time then.
    return !kernels_.empty() && kernels_version_ == state_.weights_version() && !state_.weights_exposed();
}

void Trainer::ensure_kernels() {
    const bool dynamic = kernel_options_.pipeline == mil::Pipeline::Dynamic;
    if (dynamic ? !kernels_.empty() : static_kernels_current()) return;
    ScopedTimer t{timings_.compile};
    kernels_.clear();
    // Built aside and kept only when complete: a failed compile (say, the budget) leaves none.
    std::vector<std::unique_ptr<LayerKernels>> built;
    const int sets = dynamic ? 1 : config().n_layers;
    for (int l = 0; l < sets; ++l) {
        mil::LayerWeights w;
        if (!dynamic) {
            const Params::Layer& p = w_.layers[size_t(l)];
            w = {p.wq, p.wk, p.wv, p.wo, p.w1, p.w2, p.w3, p.q_norm, p.k_norm};
        }
        auto ks = std::make_unique<LayerKernels>();
        const mil::LayerWeights* wp = dynamic ? nullptr : &w;
        for (mil::KernelSource& src : mil::layer_kernels(shape_, kernel_options_, wp)) {
            const std::string label = src.name + (dynamic ? "" : "[layer " + std::to_string(l) + "]");
            ++timings_.compiles;
            ks->kernels[src.name] = backend_->compile(src.text, src.blobs, label);
            // the weights are the inputs after the activations (mil/kernels.h)
            for (const std::string& input : src.inputs)
                if (Params::Field f = Params::field(input))
                    ks->weight_inputs[src.name].push_back(f);
                else if (ks->weight_inputs.count(src.name))
                    throw std::logic_error(src.name + ": activation input '" + input + "' after a weight");
            src.text.clear();
            src.blobs.clear();
            ks->sources[src.name] = std::move(src);
        }
        built.push_back(std::move(ks));
    }
    if (!built.empty() && !acts_.empty()) check_result_sizes(*built[0], *acts_[0]);
    kernels_ = std::move(built);
    kernels_version_ = state_.weights_version();
    if (!kernel_options_.ane_shaped) return;
    // One packed input per layer and kernel; the layout never changes, so a recompile keeps them.
    for (int l = 0; l < config().n_layers; ++l)
        for (const auto& [name, src] : kernels_[dynamic ? 0 : size_t(l)]->sources) {
            PackedInput& in = packed_[size_t(l)][name];
            if (!in.data.empty()) continue;
            const backend::TensorSpec& spec = kernels_[dynamic ? 0 : size_t(l)]->kernels.at(name)->inputs().at(0);
            in.blocks = src.input_layout;
            in.width = spec.shape.at(3);
            in.data.assign(size_t(spec.numel()), 0);
            in.id = next_packed_id();
            for (const mil::Block& b : in.blocks) {
                in.block_weights.push_back(Params::field(b.name));
                if (in.block_weights.back()) continue;
                auto& cols = in.activation_columns;
                if (!cols.empty() && cols.back().second == b.column)
                    cols.back().second = b.column + b.columns;
                else
                    cols.emplace_back(b.column, b.column + b.columns);
            }
        }
}

// Each kernel's results must fill its per-layer buffer exactly: LayerActs' views rely on it.
void Trainer::check_result_sizes(const LayerKernels& ks, const LayerActs& a) {
    const std::map<std::string, size_t> sizes{{"attention_forward", a.attn_fwd.size()},
                                              {"ffn_forward", a.ffn_fwd.size()},
                                              {"ffn_backward", a.ffn_bwd.size()},
                                              {"attention_backward", a.attn_bwd.size()}};
    for (const auto& [name, k] : ks.kernels) {
        size_t n = 0;
        for (const backend::TensorSpec& o : k->outputs()) n += o.name == "probs" ? 0 : size_t(o.numel());
        if (n != sizes.at(name))
            throw std::logic_error(name + ": its results (" + std::to_string(n) + " values) do not fill the " +
                                   std::to_string(sizes.at(name)) + " the trainer keeps for them");
    }
}

std::vector<Placement> Trainer::placements() const {
    std::vector<Placement> out;
    for (const std::string& name : mil::layer_kernel_names()) {
        Placement p{name, "", ""};
        for (const auto& ks : kernels_) {
            const backend::Kernel& k = *ks->kernels.at(name);
            if (p.backend.empty() || (p.reason.empty() && !k.placement_note().empty()))
                p.backend = k.backend_name(), p.reason = k.placement_note();
        }
        if (!p.backend.empty()) out.push_back(p);
    }
    return out;
}

void Trainer::release_kernels() {
    dw_->drain();
    kernels_.clear();
}

void Trainer::eval(backend::Kernel& k, const std::vector<In>& in, const std::vector<float*>& out) {
    std::vector<backend::HostTensor> hin, hout;
    for (size_t i = 0; i < in.size(); ++i)
        hin.push_back({const_cast<float*>(in[i].data), mil::DType::fp32, k.inputs()[i].numel(), in[i].fp16_exact});
    for (size_t i = 0; i < out.size(); ++i) hout.push_back({out[i], mil::DType::fp32, k.outputs()[i].numel()});
    const auto t0 = Clock::now();
    const double io0 = k.io_ms();
    k.eval(hin, hout);
    const double io = k.io_ms() - io0;
    timings_.io += io;
    timings_.kernels += ms_since(t0) - io;
    ++timings_.kernel_evals;
}

Trainer::Params::Field Trainer::Params::field(const std::string& name) {
    static const std::map<std::string, Field> fields{
        {"wq", &Layer::wq}, {"wk", &Layer::wk}, {"wv", &Layer::wv}, {"wo", &Layer::wo},         {"w1", &Layer::w1},
        {"w2", &Layer::w2}, {"w3", &Layer::w3}, {"q_norm", &Layer::q_norm}, {"k_norm", &Layer::k_norm}};
    auto it = fields.find(name);
    return it == fields.end() ? nullptr : it->second;
}

Trainer::Params Trainer::resolve(std::vector<float>& flat) const {
    auto at = [&](const std::string& name) { return flat.data() + state_.slot(name).offset; };
    Params p;
    p.tok_embeddings = at("tok_embeddings");
    p.norm = at("norm");
    p.classifier = config().tie_embeddings ? p.tok_embeddings : at("output");
    const bool qk = config().qk_norm;
    for (int l = 0; l < config().n_layers; ++l) {
        auto t = [&](const char* n) { return at(layer_weight_name(l, n)); };
        const std::string pre = "layers." + std::to_string(l) + ".";
        p.layers.push_back({t("wq"), t("wk"), t("wv"), t("wo"), t("w1"), t("w2"), t("w3"), at(pre + "attention_norm"),
                            at(pre + "ffn_norm"), qk ? t("q_norm") : nullptr, qk ? t("k_norm") : nullptr});
    }
    return p;
}

std::vector<Trainer::In> Trainer::inputs(const LayerKernels& ks, const std::string& kernel, int layer,
                                         std::vector<In> acts) {
    const size_t n_inputs = ks.sources.at(kernel).inputs.size();
    const auto it = ks.weight_inputs.find(kernel);
    const size_t n_weights = it == ks.weight_inputs.end() ? 0 : it->second.size();
    if (acts.size() + n_weights != n_inputs)
        throw std::logic_error(kernel + ": " + std::to_string(acts.size()) + " activations and " +
                               std::to_string(n_weights) + " weights for " + std::to_string(n_inputs) + " inputs");
    const Params::Layer& W = w_.layers[size_t(layer)];
    for (size_t i = 0; i < n_weights; ++i) {
        const float* w = W.*(it->second[i]);
        acts.push_back(rounded_weights_ ? In{state_.rounded(w), true} : In{w, false});
    }
    return acts;
}

void Trainer::run(int layer, const std::string& kernel, std::vector<In> acts, float* out) {
    const bool dynamic = kernel_options_.pipeline == mil::Pipeline::Dynamic;
    LayerKernels& ks = *kernels_[dynamic ? 0 : size_t(layer)];
    backend::Kernel& k = *ks.kernels.at(kernel);
    if (!kernel_options_.ane_shaped) {
        std::vector<float*> outs;
        float* at = out;
        for (const backend::TensorSpec& o : k.outputs()) {
            if (o.name == "probs") {
                outs.push_back(acts_[size_t(layer)]->probs.data());
                continue;
            }
            outs.push_back(at);
            at += o.numel();
        }
        eval(k, inputs(ks, kernel, layer, std::move(acts)), outs);
        return;
    }
    // ANE-shaped: the activations go into their blocks of the packed input (the weights are there already)
    PackedInput& in = packed_[size_t(layer)].at(kernel);
    {
        ScopedTimer t{timings_.io};
        const int64_t S = config().seq_len;
        size_t next = 0;
        for (const mil::Block& b : in.blocks) {
            if (in.block_weights[size_t(&b - in.blocks.data())]) continue;
            if (next >= acts.size()) throw std::logic_error(kernel + ": fewer activations than its input blocks");
            const float* src = acts[next++].data;
            threads::parallel_for(size_t(b.channels), 16, [&](size_t r0, size_t r1) {
                for (size_t r = r0; r < r1; ++r)
                    fp16::f32_to_f16(src + r * size_t(S), in.data.data() + r * size_t(in.width) + size_t(b.column),
                                     size_t(S));
            });
        }
        if (next != acts.size()) throw std::logic_error(kernel + ": more activations than its input blocks");
    }
    const backend::TensorSpec& ospec = k.outputs().at(0);
    backend::HostTensor packed{in.data.data(), mil::DType::fp16, int64_t(in.data.size())};
    packed.reuse_id = in.id;
    if (!in.all_new) packed.columns = in.activation_columns;
    const auto t0 = Clock::now();
    const double io0 = k.io_ms();
    k.eval({packed}, {{out, mil::DType::fp32, ospec.numel()}});
    in.all_new = false;
    const double io = k.io_ms() - io0;
    timings_.io += io;
    timings_.kernels += ms_since(t0) - io;
    ++timings_.kernel_evals;
}

void Trainer::stage_weights(int layer) {
    if (!kernel_options_.ane_shaped || kernel_options_.pipeline != mil::Pipeline::Dynamic) return;
    uint64_t& staged = staged_version_[size_t(layer)];
    if (staged == state_.weights_version() && !state_.weights_exposed()) return;
    ScopedTimer t{timings_.io};
    for (auto& [kernel, in] : packed_[size_t(layer)])
        for (size_t i = 0; i < in.blocks.size(); ++i) {
            in.all_new = true;
            const mil::Block& b = in.blocks[i];
            if (!in.block_weights[i]) continue;
            const float* w = w_.layers[size_t(layer)].*(in.block_weights[i]);  // [channels][columns] row-major
            threads::parallel_for(size_t(b.channels), 16, [&](size_t r0, size_t r1) {
                for (size_t r = r0; r < r1; ++r)
                    fp16::f32_to_f16(w + r * size_t(b.columns), in.data.data() + r * size_t(in.width) + size_t(b.column),
                                     size_t(b.columns));
            });
        }
    staged = state_.weights_version();
}

void Trainer::forward_sequence(const int32_t* tok) {
    const ModelConfig& c = config();
    const int D = c.dim, S = c.seq_len;
    const size_t DS = size_t(D) * S;
    {
        ScopedTimer t{timings_.cpu_ops};
        float* x0 = c.n_layers > 0 ? acts_[0]->x.data() : x_.data();
        cpu::embedding_fwd(w_.tok_embeddings, c.vocab_size, D, tok, S, x0);
    }
    for (int l = 0; l < c.n_layers; ++l) {
        LayerActs& a = *acts_[l];
        const Params::Layer& W = w_.layers[size_t(l)];
        stage_weights(l);
        {
            ScopedTimer t{timings_.cpu_ops};
            cpu::rmsnorm_fwd(a.x.data(), W.attention_norm, D, S, c.norm_eps, a.xn.data(),
                             a.rrms1.data());
        }
        run(l, "attention_forward", {{a.xn.data(), false}}, a.attn_fwd.data());
        {
            ScopedTimer t{timings_.cpu_ops};
            cpu::add(a.x.data(), a.o, a.x2.data(), DS);
            cpu::rmsnorm_fwd(a.x2.data(), W.ffn_norm, D, S, c.norm_eps, a.x2n.data(),
                             a.rrms2.data());
        }
        run(l, "ffn_forward", {{a.x2n.data(), false}}, a.ffn_fwd.data());
        {
            ScopedTimer t{timings_.cpu_ops};  // the residual stream goes straight into the next layer's input
            float* next = l + 1 < c.n_layers ? acts_[l + 1]->x.data() : x_.data();
            cpu::add(a.x2.data(), a.f, next, DS);
        }
    }
    ScopedTimer t{timings_.cpu_ops};
    cpu::rmsnorm_fwd(x_.data(), w_.norm, D, S, c.norm_eps, x_final_.data(), rrms_final_.data());
    cpu::classifier_fwd(w_.classifier, x_final_.data(), c.vocab_size, D, S, logits_.data(), &softmax_);
}

std::vector<std::pair<size_t, size_t>> Trainer::grads_ready_ranges() const {
    std::vector<std::pair<size_t, size_t>> out{norm_grads_};
    out.insert(out.end(), layer_grads_.rbegin(), layer_grads_.rend());
    out.push_back(embedding_grads_);
    return out;
}

void Trainer::grads_ready(const GradsReady* ready, std::pair<size_t, size_t> range) {
    if (ready && *ready) dw_->submit([ready, range] { (*ready)(range.first, range.second); });
}

// dW = beta dW + dY X^T for dY [out][S], X [in][S] (dW [out][in], row-major).
void Trainer::weight_grad(float* dw, const float* dy, const float* x, int out, int in, float beta, bool last) {
    const int S = config().seq_len;
    blas::sgemm(false, true, out, in, S, 1.f, dy, S, x, S, beta, dw, in);
    if (last) {  // the norm's sums of this gradient while it is in cache
        const size_t o = size_t(dw - state_.grads.data());
        state_.sum_grads(o, o + size_t(out) * size_t(in));
    }
}

double Trainer::backward_sequence(const int32_t* tok, bool overwrite, bool last, const GradsReady* ready) {
    const ModelConfig& c = config();
    const int D = c.dim, S = c.seq_len, QD = c.q_dim(), KV = c.kv_dim(), H = c.ffn_dim(), V = c.vocab_size;
    const size_t DS = size_t(D) * S;
    const bool out16 = kernel_options_.dtype == mil::DType::fp16;  // the forward kernels' outputs are fp16 values
    double loss;
    {
        ScopedTimer t{timings_.cpu_ops};
        loss = cpu::classifier_loss_bwd(w_.classifier, x_final_.data(), logits_.data(), softmax_, tok + 1,
                                        opt_.loss_scale, V, D, S, tmp_.data(), g_.classifier, overwrite);
        std::fill(dx_.begin(), dx_.end(), 0.f);
        cpu::rmsnorm_bwd(tmp_.data(), x_.data(), w_.norm, rrms_final_.data(), D, S, dx_.data(), g_.norm);
    }
    grads_ready(ready, norm_grads_);
    for (int l = c.n_layers - 1; l >= 0; --l) {
        LayerActs& a = *acts_[l];
        const Params::Layer &W = w_.layers[size_t(l)], &G = g_.layers[size_t(l)];
        const float beta = overwrite ? 0.f : 1.f;
        // FFN branch: x_next = x2 + f, so df = dx
        std::memcpy(a.df.data(), dx_.data(), DS * sizeof(float));
        run(l, "ffn_backward", {{a.df.data(), false}, {a.h1, out16}, {a.h3, out16}}, a.ffn_bwd.data());
        float *gw1 = G.w1, *gw2 = G.w2, *gw3 = G.w3;
        dw_->submit([=, &a] {
            weight_grad(gw2, a.df.data(), a.gate, D, H, beta, last);
            weight_grad(gw1, a.dh1, a.x2n.data(), H, D, beta, last);
            weight_grad(gw3, a.dh3, a.x2n.data(), H, D, beta, last);
        });
        {
            ScopedTimer t{timings_.cpu_ops};
            std::memcpy(a.dx2.data(), dx_.data(), DS * sizeof(float));
            cpu::rmsnorm_bwd(a.dx2n, a.x2.data(), W.ffn_norm, a.rrms2.data(), D, S, a.dx2.data(), G.ffn_norm);
        }
        // attention branch: x2 = x + o, so do = dx2
        std::vector<In> attn_in{{a.dx2.data(), false}, {a.q, out16}, {a.k, out16}, {a.v, out16}};
        if (kernel_options_.probs_tap) attn_in.push_back({a.probs.data(), out16});
        run(l, "attention_backward", std::move(attn_in), a.attn_bwd.data());
        float *gq = G.wq, *gk = G.wk, *gv = G.wv, *go = G.wo;
        dw_->submit([=, &a] {
            weight_grad(go, a.dx2.data(), a.attn, D, QD, beta, last);
            weight_grad(gq, a.dq, a.xn.data(), QD, D, beta, last);
            weight_grad(gk, a.dk, a.xn.data(), KV, D, beta, last);
            weight_grad(gv, a.dv, a.xn.data(), KV, D, beta, last);
        });
        {
            ScopedTimer t{timings_.cpu_ops};
            if (c.qk_norm) {
                cpu::add_row_sums(a.dq_norm, c.head_size(), S, G.q_norm);
                cpu::add_row_sums(a.dk_norm, c.head_size(), S, G.k_norm);
            }
            std::memcpy(dx_.data(), a.dx2.data(), DS * sizeof(float));
            cpu::rmsnorm_bwd(a.dxn, a.x.data(), W.attention_norm, a.rrms1.data(), D, S, dx_.data(), G.attention_norm);
        }
        grads_ready(ready, layer_grads_[size_t(l)]);
    }
    {
        ScopedTimer t{timings_.cpu_ops};
        cpu::embedding_bwd(dx_.data(), tok, S, V, D, g_.tok_embeddings);
    }
    grads_ready(ready, embedding_grads_);
    ScopedTimer t{timings_.dw_wait};
    dw_->drain();  // the next sequence overwrites the activations the jobs read
    return loss;
}

double Trainer::accumulate(const int32_t* tokens, int batch, const GradsReady& ready) {
    if (batch <= 0) throw std::invalid_argument("batch must be positive");
    const auto t0 = Clock::now();
    ensure_kernels();
    {
        ScopedTimer t{timings_.io};  // only after the weights changed outside an update
        state_.refresh_rounded();
    }
    const int S = config().seq_len;
    // After an update the gradients are stale (see ModelState): the first sequence overwrites
    // them. The step only adds to the RMSNorm gains' gradients (sums over calls) and an untied
    // embedding's (scattered rows), so those are zeroed instead.
    const bool overwrite = state_.take_stale_grads();
    if (overwrite)
        for (const ParamSlot& s : state_.slots())
            if (s.spec.vector || (!config().tie_embeddings && s.spec.name == "tok_embeddings"))
                std::fill_n(state_.grads.data() + s.offset, s.spec.numel(), 0.f);
    state_.grads_changing();
    double loss = 0;
    try {
        for (int b = 0; b < batch; ++b) {
            const int32_t* tok = tokens + size_t(b) * (S + 1);
            forward_sequence(tok);
            const bool last = b == batch - 1;
            loss += backward_sequence(tok, overwrite && b == 0, last, last ? &ready : nullptr);
            ++pending_;
        }
    } catch (...) {
        // Half-written gradients over stale ones would be garbage: start from zero instead.
        if (overwrite) state_.zero_grads();
        throw;
    }
    state_.grads_final();
    timings_.total += ms_since(t0);
    return loss / batch;
}

double Trainer::update(const cpu::AdamW& opt, float clip, int sequences) {
    if (pending_ == 0) throw std::logic_error("update() without accumulated gradients");
    if (sequences < 0) throw std::invalid_argument("sequences must not be negative");
    const auto t0 = Clock::now();
    ScopedTimer t{timings_.optimizer};
    const float unscale = 1.f / (opt_.loss_scale * float(sequences > 0 ? sequences : pending_));
    const double norm = state_.grad_norm() * unscale;
    const float clip_factor = clip > 0.f ? cpu::clip_scale(norm, clip) : 1.f;
    state_.adamw_update(opt, unscale * clip_factor, /*clear_grads=*/true);
    pending_ = 0;  // (the update changed the weights: the static pipeline recompiles)
    timings_.total += ms_since(t0);
    return norm;
}

std::vector<float> Trainer::forward(const int32_t* tokens, int batch) {
    ensure_kernels();
    state_.refresh_rounded();
    const ModelConfig& c = config();
    const size_t S = size_t(c.seq_len), V = size_t(c.vocab_size);
    std::vector<float> out(size_t(batch) * S * V);
    for (int b = 0; b < batch; ++b) {
        forward_sequence(tokens + size_t(b) * S);
        float* o = out.data() + size_t(b) * S * V;
        for (size_t v = 0; v < V; ++v)
            for (size_t s = 0; s < S; ++s) o[s * V + v] = logits_[v * S + s];
    }
    return out;
}

}  // namespace anetrain::train
