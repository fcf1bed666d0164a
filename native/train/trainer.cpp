#include "train/trainer.h"

#include <chrono>
#include <cstdio>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "backend/ane/policy.h"
#include "backend/ref/ref_backend.h"
#include "core/blas.h"

namespace anetrain::train {
namespace {

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Adds ms to `acc` when it goes out of scope.
struct Timer {
    double& acc;
    Clock::time_point t0 = Clock::now();
    ~Timer() { acc += ms_since(t0); }
};

// dW = beta dW + dY X^T for dY [out][S], X [in][S] (dW [out][in], row-major).
void accumulate_dw(float* dw, const float* dy, const float* x, int out, int in, int S, float beta) {
    blas::sgemm(false, true, out, in, S, 1.f, dy, S, x, S, beta, dw, in);
}

// llama2.c's name of a layer weight the kernels call wq..wo / w1..w3.
std::string layer_weight_name(int layer, const std::string& n) {
    const bool attention = n == "wq" || n == "wk" || n == "wv" || n == "wo";
    return "layers." + std::to_string(layer) + (attention ? ".attention." : ".feed_forward.") + n;
}

}  // namespace

// Activations of one layer for the sequence in flight, and the gradients the dW jobs read.
struct Trainer::LayerActs {
    std::vector<float> x, rrms1, xn, q, k, v, attn, probs, x2, rrms2, x2n, h1, h3, gate;
    std::vector<float> df, dx2, dh1, dh3, dq, dk, dv;
    LayerActs(const ModelConfig& c, bool probs_tap) {
        const size_t S = size_t(c.seq_len), D = size_t(c.dim), KV = size_t(c.kv_dim()), H = size_t(c.ffn_dim());
        if (probs_tap) probs.resize(size_t(c.n_heads) * S * S);
        for (auto* b : {&x, &xn, &q, &attn, &x2, &x2n, &df, &dx2, &dq}) b->resize(D * S);
        for (auto* b : {&k, &v, &dk, &dv}) b->resize(KV * S);
        for (auto* b : {&h1, &h3, &gate, &dh1, &dh3}) b->resize(H * S);
        rrms1.resize(S);
        rrms2.resize(S);
    }
};

struct Trainer::LayerKernels {
    std::unique_ptr<backend::Kernel> attn_fwd, ffn_fwd, ffn_bwd, attn_bwd;
    std::map<std::string, std::vector<std::string>> inputs;  // kernel name -> input names in order
};

// Runs dW jobs on one worker thread (overlap) or inline.
class Trainer::DwQueue {
public:
    DwQueue(bool threaded, double& busy_ms) : busy_(busy_ms) {
        if (threaded) worker_ = std::thread([this] { loop(); });
    }
    ~DwQueue() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            quit_ = true;
        }
        cv_.notify_all();
        if (worker_.joinable()) worker_.join();
    }
    void submit(std::function<void()> job) {
        if (!worker_.joinable()) {
            Timer t{busy_};
            job();
            return;
        }
        std::lock_guard<std::mutex> lk(mu_);
        jobs_.push_back(std::move(job));
        cv_.notify_all();
    }
    // Waits for every submitted job; rethrows the first failure.
    void drain() {
        std::unique_lock<std::mutex> lk(mu_);
        idle_cv_.wait(lk, [&] { return jobs_.empty() && !running_; });
        if (error_) {
            auto e = error_;
            error_ = nullptr;
            std::rethrow_exception(e);
        }
    }

private:
    void loop() {
        for (;;) {
            std::function<void()> job;
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_.wait(lk, [&] { return quit_ || !jobs_.empty(); });
                if (jobs_.empty()) return;
                job = std::move(jobs_.front());
                jobs_.pop_front();
                running_ = true;
            }
            const auto t0 = Clock::now();
            std::exception_ptr err;
            try {
                job();
            } catch (...) {
                err = std::current_exception();
            }
            std::lock_guard<std::mutex> lk(mu_);
            busy_ += ms_since(t0);
            if (err && !error_) error_ = err;
            running_ = false;
            if (jobs_.empty()) idle_cv_.notify_all();
        }
    }

    double& busy_;
    std::thread worker_;
    std::mutex mu_;
    std::condition_variable cv_, idle_cv_;
    std::deque<std::function<void()>> jobs_;
    bool running_ = false, quit_ = false;
    std::exception_ptr error_;
};

Trainer::Trainer(const ModelConfig& cfg, std::shared_ptr<backend::Backend> backend, const TrainerOptions& opt)
    : state_(cfg), backend_(std::move(backend)), opt_(opt) {
    if (!backend_) throw std::invalid_argument("Trainer needs a backend");
    const ModelConfig& c = state_.config();
    shape_.dim = c.dim;
    shape_.hidden = c.ffn_dim();
    shape_.n_heads = c.n_heads;
    shape_.n_kv_heads = c.kv_heads();
    shape_.seq = c.seq_len;
    shape_.rope_theta = c.rope_theta;
    shape_.validate();
    kopt_.pipeline = mil::pipeline_from_string(opt_.pipeline);
    if (opt_.precision == "fp16") {
        kopt_.dtype = mil::DType::fp16;
    } else if (opt_.precision == "fp32") {
        if (backend_->name() != "ref")
            throw std::invalid_argument("precision fp32 runs only on the ref backend (the " + backend_->name() +
                                        " backend computes in fp16)");
        kopt_.dtype = mil::DType::fp32;
    } else {
        throw std::invalid_argument("unknown precision '" + opt_.precision + "' (use fp16 or fp32)");
    }
    kopt_.dialect = mil::Dialect::from_string(opt_.dialect);
    kopt_.probs_tap = opt_.probs_tap < 0 ? backend_->name() == "ref" : opt_.probs_tap > 0;
    if (!(opt_.loss_scale > 0.f)) throw std::invalid_argument("loss_scale must be positive");
    for (int l = 0; l < c.n_layers; ++l) acts_.push_back(std::make_unique<LayerActs>(c, kopt_.probs_tap));
    const size_t D = size_t(c.dim), S = size_t(c.seq_len);
    x_.resize(D * S);
    xf_.resize(D * S);
    rrms_f_.resize(S);
    dx_.resize(D * S);
    tmp_.resize(D * S);
    logits_.resize(size_t(c.vocab_size) * S);
    const bool overlap = opt_.overlap_dw < 0 ? backend_->name() != "ref" : opt_.overlap_dw > 0;
    dw_ = std::make_unique<DwQueue>(overlap, t_.dw);
}

Trainer::~Trainer() = default;

int Trainer::compiles_needed() const {
    const int per_set = int(mil::layer_kernel_names().size());
    if (kopt_.pipeline == mil::Pipeline::Dynamic) return kernels_.empty() ? per_set : 0;
    return static_kernels_current() ? 0 : per_set * config().n_layers;
}

bool Trainer::static_kernels_current() const {
    // Weights behind a live view may have changed unseen: rebuild every time then.
    return !kernels_.empty() && kernels_version_ == state_.weights_version() && !state_.weights_exposed();
}

void Trainer::ensure_kernels() {
    const bool dynamic = kopt_.pipeline == mil::Pipeline::Dynamic;
    if (dynamic ? !kernels_.empty() : static_kernels_current()) return;
    Timer t{t_.compile};
    kernels_.clear();
    // Built aside and kept only when complete: a failed compile (say, the budget) leaves none.
    std::vector<std::unique_ptr<LayerKernels>> built;
    const int sets = dynamic ? 1 : config().n_layers;
    for (int l = 0; l < sets; ++l) {
        mil::LayerWeights w;
        if (!dynamic) {
            auto p = [&](const char* n) { return weight(layer_weight_name(l, n)); };
            w = {p("wq"), p("wk"), p("wv"), p("wo"), p("w1"), p("w2"), p("w3")};
        }
        auto ks = std::make_unique<LayerKernels>();
        auto compile = [&](mil::KernelSource src) {
            ks->inputs[src.name] = src.inputs;
            const std::string label = src.name + (dynamic ? "" : "[layer " + std::to_string(l) + "]");
            ++t_.compiles;
            auto primary = [&] { return backend_->compile(src.text, src.blobs, label); };
            if (backend_->name() != "ane") return primary();
            // A kernel the ANE compiler rejects (older chips lack some ops) runs on the ref
            // backend instead, with one warning per kernel, unless ANETRAIN_STRICT=1.
            auto fallback = [&] {
                if (!fallback_) fallback_ = backend::make_ref_backend({});
                return fallback_->compile(src.text, src.blobs, label);
            };
            auto warn = [](const std::string& m) { std::fprintf(stderr, "warning: %s\n", m.c_str()); };
            return backend::ane::compile_with_fallback(src.name, primary, fallback, backend::ane::strict_from_env(),
                                                       warn);
        };
        const mil::LayerWeights* wp = dynamic ? nullptr : &w;
        ks->attn_fwd = compile(mil::attention_forward(shape_, kopt_, wp));
        ks->ffn_fwd = compile(mil::ffn_forward(shape_, kopt_, wp));
        ks->ffn_bwd = compile(mil::ffn_backward(shape_, kopt_, wp));
        ks->attn_bwd = compile(mil::attention_backward(shape_, kopt_, wp));
        built.push_back(std::move(ks));
    }
    kernels_ = std::move(built);
    kernels_version_ = state_.weights_version();
}

void Trainer::eval(backend::Kernel& k, const std::vector<In>& in, const std::vector<float*>& out) {
    const auto t0 = Clock::now();
    const double io0 = k.io_ms();
    std::vector<backend::HostTensor> hin, hout;
    for (size_t i = 0; i < in.size(); ++i)
        hin.push_back({const_cast<float*>(in[i].data), mil::DType::fp32, k.inputs()[i].numel(), in[i].fp16_exact});
    for (size_t i = 0; i < out.size(); ++i) hout.push_back({out[i], mil::DType::fp32, k.outputs()[i].numel()});
    k.eval(hin, hout);
    const double io = k.io_ms() - io0;
    t_.io += io;
    t_.kernels += ms_since(t0) - io;
    ++t_.kernel_evals;
}

float* Trainer::weight(const std::string& name) { return state_.weights.data() + state_.slot(name).offset; }
float* Trainer::grad(const std::string& name) { return state_.grads.data() + state_.slot(name).offset; }

std::vector<Trainer::In> Trainer::inputs(const LayerKernels& ks, const std::string& kernel, int layer,
                                         std::vector<In> acts) {
    const auto& names = ks.inputs.at(kernel);
    for (size_t i = acts.size(); i < names.size(); ++i) acts.push_back({weight(layer_weight_name(layer, names[i])), false});
    return acts;
}

void Trainer::forward_sequence(const int32_t* tok) {
    const ModelConfig& c = config();
    const int D = c.dim, S = c.seq_len;
    const size_t DS = size_t(D) * S;
    const bool dynamic = kopt_.pipeline == mil::Pipeline::Dynamic;
    {
        Timer t{t_.cpu_ops};
        float* x0 = c.n_layers > 0 ? acts_[0]->x.data() : x_.data();
        cpu::embedding_fwd(weight("tok_embeddings"), c.vocab_size, D, tok, S, x0);
    }
    for (int l = 0; l < c.n_layers; ++l) {
        LayerActs& a = *acts_[l];
        LayerKernels& ks = *kernels_[dynamic ? 0 : l];
        const std::string p = "layers." + std::to_string(l) + ".";
        {
            Timer t{t_.cpu_ops};
            cpu::rmsnorm_fwd(a.x.data(), weight(p + "attention_norm"), D, S, c.norm_eps, a.xn.data(),
                             a.rrms1.data());
        }
        std::vector<float*> attn_out{tmp_.data(), a.q.data(), a.k.data(), a.v.data(), a.attn.data()};
        if (kopt_.probs_tap) attn_out.push_back(a.probs.data());
        eval(*ks.attn_fwd, inputs(ks, "attention_forward", l, {{a.xn.data(), false}}), attn_out);
        {
            Timer t{t_.cpu_ops};
            cpu::add(a.x.data(), tmp_.data(), a.x2.data(), DS);
            cpu::rmsnorm_fwd(a.x2.data(), weight(p + "ffn_norm"), D, S, c.norm_eps, a.x2n.data(),
                             a.rrms2.data());
        }
        eval(*ks.ffn_fwd, inputs(ks, "ffn_forward", l, {{a.x2n.data(), false}}),
             {tmp_.data(), a.h1.data(), a.h3.data(), a.gate.data()});
        {
            Timer t{t_.cpu_ops};  // the residual stream goes straight into the next layer's input
            float* next = l + 1 < c.n_layers ? acts_[l + 1]->x.data() : x_.data();
            cpu::add(a.x2.data(), tmp_.data(), next, DS);
        }
    }
    Timer t{t_.cpu_ops};
    cpu::rmsnorm_fwd(x_.data(), weight("norm"), D, S, c.norm_eps, xf_.data(), rrms_f_.data());
    cpu::classifier_fwd(weight("tok_embeddings"), xf_.data(), c.vocab_size, D, S, logits_.data(), &softmax_);
}

double Trainer::backward_sequence(const int32_t* tok, bool overwrite) {
    const ModelConfig& c = config();
    const int D = c.dim, S = c.seq_len, KV = c.kv_dim(), H = c.ffn_dim(), V = c.vocab_size;
    const size_t DS = size_t(D) * S;
    const bool dynamic = kopt_.pipeline == mil::Pipeline::Dynamic;
    const bool out16 = kopt_.dtype == mil::DType::fp16;  // the forward kernels' outputs are fp16 values
    double loss;
    {
        Timer t{t_.cpu_ops};
        loss = cpu::classifier_loss_bwd(weight("tok_embeddings"), xf_.data(), logits_.data(), softmax_, tok + 1,
                                        opt_.loss_scale, V, D, S, tmp_.data(), grad("tok_embeddings"), overwrite);
        std::fill(dx_.begin(), dx_.end(), 0.f);
        cpu::rmsnorm_bwd(tmp_.data(), x_.data(), weight("norm"), rrms_f_.data(), D, S, dx_.data(),
                         grad("norm"));
    }
    for (int l = c.n_layers - 1; l >= 0; --l) {
        LayerActs& a = *acts_[l];
        LayerKernels& ks = *kernels_[dynamic ? 0 : l];
        const std::string p = "layers." + std::to_string(l) + ".";
        auto W = [&](const std::string& n) { return weight(p + n); };
        auto G = [&](const std::string& n) { return grad(p + n); };
        const float beta = overwrite ? 0.f : 1.f;
        // FFN branch: x_next = x2 + f, so df = dx
        std::memcpy(a.df.data(), dx_.data(), DS * sizeof(float));
        eval(*ks.ffn_bwd, inputs(ks, "ffn_backward", l, {{a.df.data(), false}, {a.h1.data(), out16}, {a.h3.data(), out16}}),
             {tmp_.data(), a.dh1.data(), a.dh3.data()});
        float *gw1 = G("feed_forward.w1"), *gw2 = G("feed_forward.w2"), *gw3 = G("feed_forward.w3");
        dw_->submit([=, &a] {
            accumulate_dw(gw2, a.df.data(), a.gate.data(), D, H, S, beta);
            accumulate_dw(gw1, a.dh1.data(), a.x2n.data(), H, D, S, beta);
            accumulate_dw(gw3, a.dh3.data(), a.x2n.data(), H, D, S, beta);
        });
        {
            Timer t{t_.cpu_ops};
            std::memcpy(a.dx2.data(), dx_.data(), DS * sizeof(float));
            cpu::rmsnorm_bwd(tmp_.data(), a.x2.data(), W("ffn_norm"), a.rrms2.data(), D, S, a.dx2.data(),
                             G("ffn_norm"));
        }
        // attention branch: x2 = x + o, so do = dx2
        std::vector<In> attn_in{{a.dx2.data(), false}, {a.q.data(), out16}, {a.k.data(), out16}, {a.v.data(), out16}};
        if (kopt_.probs_tap) attn_in.push_back({a.probs.data(), out16});
        eval(*ks.attn_bwd, inputs(ks, "attention_backward", l, std::move(attn_in)),
             {tmp_.data(), a.dq.data(), a.dk.data(), a.dv.data()});
        float *gq = G("attention.wq"), *gk = G("attention.wk"), *gv = G("attention.wv"), *go = G("attention.wo");
        dw_->submit([=, &a] {
            accumulate_dw(go, a.dx2.data(), a.attn.data(), D, D, S, beta);
            accumulate_dw(gq, a.dq.data(), a.xn.data(), D, D, S, beta);
            accumulate_dw(gk, a.dk.data(), a.xn.data(), KV, D, S, beta);
            accumulate_dw(gv, a.dv.data(), a.xn.data(), KV, D, S, beta);
        });
        Timer t{t_.cpu_ops};
        std::memcpy(dx_.data(), a.dx2.data(), DS * sizeof(float));
        cpu::rmsnorm_bwd(tmp_.data(), a.x.data(), W("attention_norm"), a.rrms1.data(), D, S, dx_.data(),
                         G("attention_norm"));
    }
    {
        Timer t{t_.cpu_ops};
        cpu::embedding_bwd(dx_.data(), tok, S, V, D, grad("tok_embeddings"));
    }
    Timer t{t_.dw_wait};
    dw_->drain();  // the next sequence overwrites the activations the jobs read
    return loss;
}

double Trainer::accumulate(const int32_t* tokens, int batch) {
    if (batch <= 0) throw std::invalid_argument("batch must be positive");
    const auto t0 = Clock::now();
    ensure_kernels();
    const int S = config().seq_len;
    // After an update the gradients are stale (see ModelState): the first sequence overwrites
    // them. The RMSNorm gammas' gradients are sums over calls, so they are zeroed instead.
    const bool overwrite = state_.take_stale_grads();
    if (overwrite)
        for (const ParamSlot& s : state_.slots())
            if (s.spec.vector) std::fill_n(state_.grads.data() + s.offset, s.spec.numel(), 0.f);
    double loss = 0;
    try {
        for (int b = 0; b < batch; ++b) {
            const int32_t* tok = tokens + size_t(b) * (S + 1);
            forward_sequence(tok);
            loss += backward_sequence(tok, overwrite && b == 0);
            ++pending_;
        }
    } catch (...) {
        // Half-written gradients over stale ones would be garbage: start from zero instead.
        if (overwrite) state_.zero_grads();
        throw;
    }
    t_.total += ms_since(t0);
    return loss / batch;
}

double Trainer::update(const cpu::AdamW& opt, float clip) {
    if (pending_ == 0) throw std::logic_error("update() without accumulated gradients");
    const auto t0 = Clock::now();
    Timer t{t_.optimizer};
    const float unscale = 1.f / (opt_.loss_scale * float(pending_));
    const double norm = state_.grad_norm() * unscale;
    const float clip_factor = clip > 0.f ? cpu::clip_scale(norm, clip) : 1.f;
    state_.adamw_update(opt, unscale * clip_factor, /*clear_grads=*/true);
    pending_ = 0;  // (the update changed the weights: the static pipeline recompiles)
    t_.total += ms_since(t0);
    return norm;
}

std::vector<float> Trainer::forward(const int32_t* tokens, int batch) {
    ensure_kernels();
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
