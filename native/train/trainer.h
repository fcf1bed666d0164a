// The native training step: llama2.c's Transformer trained through the model's MIL kernels on
// a Backend (the ANE, or the ref backend on any CPU), with everything else in fp32 on the CPU.
//
// Per sequence, per layer (kernels in mil/kernels.h; [C][S] channel-major activations):
//   forward   xn = rmsnorm(x)                     CPU
//             o, q, k, v, attn = attention_forward(xn)      kernel
//             x2 = x + o;  x2n = rmsnorm(x2)      CPU
//             f, h1, h3, gate = ffn_forward(x2n)  kernel;  x = x2 + f
//   loss      logits = E rmsnorm(x); cross-entropy; dlogits scaled by the loss scale
//   backward  dx2n, dh1, dh3 = ffn_backward(dx, h1, h3);    dW1, dW2, dW3 (sgemm)
//             dx2 = dx + rmsnorm_bwd(dx2n)
//             dxn, dq, dk, dv = attention_backward(dx2, q, k, v);  dWo, dWq, dWk, dWv (sgemm)
//             dx = dx2 + rmsnorm_bwd(dxn)
// The dW sgemms go to a worker thread that overlaps the next kernel evaluation when the
// kernels run on another device (the ANE); on the ref backend they run inline, since both
// would compete for the same cores. Gradients accumulate over the sequences of a batch and
// over accumulation calls until update() applies clipping and AdamW.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "mil/kernels.h"
#include "train/model.h"

namespace anetrain::train {

struct TrainerOptions {
    std::string pipeline = "dynamic";  // "static": weights baked, recompiled per update
    std::string precision = "fp16";    // "fp32": fp32 programs (ref backend only)
    std::string dialect = "1.3/ios18";
    float loss_scale = 256.f;          // multiplies dlogits; divided out before clipping
    int overlap_dw = -1;               // -1: when the backend is not "ref"; 0 off; 1 on
    int probs_tap = -1;                // mil::KernelOptions::probs_tap; -1: when the backend is "ref"
};

// Milliseconds spent per part, summed since the last reset.
struct Timings {
    // kernels: evaluations less their fp16 I/O (io), which is counted on its own.
    double kernels = 0, io = 0, cpu_ops = 0, dw = 0, dw_wait = 0, optimizer = 0, compile = 0, total = 0;
    int64_t compiles = 0, kernel_evals = 0;
};

class Trainer {
public:
    Trainer(const ModelConfig& cfg, std::shared_ptr<backend::Backend> backend, const TrainerOptions& opt);
    ~Trainer();

    ModelState& state() { return state_; }
    const ModelConfig& config() const { return state_.config(); }
    const TrainerOptions& options() const { return opt_; }
    backend::Backend& backend() { return *backend_; }

    // Forward and backward over `batch` sequences of seq_len+1 tokens (row-major [batch][seq+1]),
    // adding to the gradients. Returns the mean cross-entropy over all predicted positions.
    double accumulate(const int32_t* tokens, int batch);
    // Clip (global norm over the unscaled mean gradient, skipped when clip <= 0), AdamW, zero
    // gradients. Returns the gradient norm before clipping.
    double update(const cpu::AdamW& opt, float clip);
    // Sequences accumulated since the last update.
    int pending_sequences() const { return pending_; }

    // Logits [batch][seq_len][vocab] for [batch][seq_len] tokens (no gradients).
    std::vector<float> forward(const int32_t* tokens, int batch);

    // Compiles the next accumulate() will need: static: 4 per layer after each update; dynamic:
    // 4 once. The driver uses this to restart before the compile budget runs out.
    int compiles_needed() const;

    const Timings& timings() const { return t_; }
    void reset_timings() { t_ = Timings{}; }

private:
    struct LayerActs;
    struct LayerKernels;
    class DwQueue;

    void ensure_kernels();
    bool static_kernels_current() const;  // static pipeline: kernels built from the current weights
    void forward_sequence(const int32_t* tok);
    // overwrite: the gradients are stale (see ModelState), write them instead of adding.
    double backward_sequence(const int32_t* tok, bool overwrite);
    float* weight(const std::string& name);
    float* grad(const std::string& name);
    // A kernel input: fp32 data, and whether it holds fp16 values already (see HostTensor).
    struct In {
        const float* data;
        bool fp16_exact;
    };
    // A kernel's inputs: the given activations, then the layer's weights it takes by name.
    std::vector<In> inputs(const LayerKernels& ks, const std::string& kernel, int layer, std::vector<In> acts);
    void eval(backend::Kernel& k, const std::vector<In>& in, const std::vector<float*>& out);

    ModelState state_;
    std::shared_ptr<backend::Backend> backend_;
    std::shared_ptr<backend::Backend> fallback_;  // ref backend for kernels the ANE rejects
    TrainerOptions opt_;
    mil::KernelShape shape_;
    mil::KernelOptions kopt_;
    std::vector<std::unique_ptr<LayerKernels>> kernels_;  // dynamic: one shared set; static: per layer
    uint64_t kernels_version_ = 0;  // the state's weights_version the static kernels were built from
    std::vector<std::unique_ptr<LayerActs>> acts_;
    std::vector<float> x_, xf_, rrms_f_, logits_, dx_, tmp_;
    cpu::SoftmaxStats softmax_;  // of logits_, from the forward pass
    std::unique_ptr<DwQueue> dw_;
    int pending_ = 0;
    Timings t_;
};

}  // namespace anetrain::train
