// The native training step: llama2.c's Transformer trained through the model's MIL kernels on
// a Backend (the ANE, or the ref backend on any CPU), with everything else in fp32 on the CPU.
//
// Per sequence, per layer (kernels in mil/kernels.h; [C][S] channel-major activations):
//   forward   xn = rmsnorm(x)                     CPU
//             o, q, k, v, attn = attention_forward(xn)      kernel
//             x2 = x + o;  x2n = rmsnorm(x2)      CPU
//             f, h1, h3, gate = ffn_forward(x2n)  kernel;  x = x2 + f
//   loss      logits = C rmsnorm(x) (C the classifier: E when tied, else "output"); cross-entropy;
//             dlogits scaled by the loss scale
//   backward  dx2n, dh1, dh3 = ffn_backward(dx, h1, h3);    dW1, dW2, dW3 (sgemm)
//             dx2 = dx + rmsnorm_bwd(dx2n)
//             dxn, dq, dk, dv = attention_backward(dx2, q, k, v);  dWo, dWq, dWk, dWv (sgemm)
//             (with QK-norm also dq_norm, dk_norm: the gains' gradients per position, summed here)
//             dx = dx2 + rmsnorm_bwd(dxn)
// The kernels run as split programs (one buffer per tensor) or ANE-shaped ones (one packed fp16
// input, one output; mil/kernels.h). Either way each kernel's results land in one per-layer
// buffer, results consecutive on the channel axis, and the trainer reads them through views.
// ANE-shaped dynamic kernels read their weights from per-layer fp16 input buffers that are
// staged once per weight change; each evaluation writes only the activation blocks.
// The dW sgemms go to a worker thread that overlaps the next kernel evaluation when the
// kernels run on another device (the ANE); on the ref backend they run inline, since both
// would compete for the same cores. Gradients accumulate over the sequences of a batch and
// over accumulation calls until update() applies clipping and AdamW.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/threads.h"
#include "mil/kernels.h"
#include "train/model.h"

namespace anetrain::train {

struct TrainerOptions {
    std::string pipeline = "dynamic";  // "static": weights baked, recompiled per update
    std::string precision = "fp16";    // "fp32": fp32 programs (ref backend only)
    std::string dialect = "1.3/ios18";
    float loss_scale = 256.f;          // multiplies dlogits; divided out before clipping
    int overlap_dw = -1;               // -1: when the backend is not "ref"; 0 off; 1 on
    int probs_tap = -1;                // mil::KernelOptions::probs_tap; -1: when the backend is "ref" (split only)
    int ane_shaped = -1;               // mil::KernelOptions::ane_shaped; -1: when the backend is "ane"
};

// Where one kernel runs: the backend that compiled it and, when that is not the backend the
// trainer was given, why (the primary backend's message).
struct Placement {
    std::string kernel, backend, reason;
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

    // Called with a range [offset, offset + count) of the flat gradient buffer once the range
    // holds its final sum for the pending update, while the backward pass goes on with earlier
    // layers (data parallel: the range can be all-reduced meanwhile). The ranges come in one
    // fixed order: norm, layers n_layers-1 down to 0, tok_embeddings; together they cover the
    // buffer. With the dW products on a worker thread the calls come from that thread.
    using GradsReady = std::function<void(size_t offset, size_t count)>;

    // Forward and backward over `batch` sequences of seq_len+1 tokens (row-major [batch][seq+1]),
    // adding to the gradients. Returns the mean cross-entropy over all predicted positions.
    // `ready`, when given, is called during the last sequence's backward pass (so pass it with
    // the last accumulate() before update()).
    double accumulate(const int32_t* tokens, int batch, const GradsReady& ready = nullptr);
    // Clip (global norm over the unscaled mean gradient, skipped when clip <= 0), AdamW, zero
    // gradients. Returns the gradient norm before clipping. `sequences`: how many sequences the
    // gradients sum over, when that is not the number accumulated here (data parallel: the sum
    // over all ranks of an all-reduced gradient); 0: pending_sequences().
    double update(const cpu::AdamW& opt, float clip, int sequences = 0);
    // Sequences accumulated since the last update.
    int pending_sequences() const { return pending_; }
    // The ranges GradsReady is called with, in the order of the calls.
    std::vector<std::pair<size_t, size_t>> grads_ready_ranges() const;

    // Logits [batch][seq_len][vocab] for [batch][seq_len] tokens (no gradients).
    std::vector<float> forward(const int32_t* tokens, int batch);

    // Compiles the next accumulate() will need: static: 4 per layer after each update; dynamic:
    // 4 once. The driver uses this to restart before the compile budget runs out.
    int compiles_needed() const;
    // Compiles a forward() right after the next update needs (static: a new set for the changed
    // weights; dynamic: none), so the driver can budget a step's evaluation with the step.
    int compiles_after_update() const;

    const Timings& timings() const { return timings_; }
    void reset_timings() { timings_ = Timings{}; }

    // Compiles the kernels the next step needs now (the driver calls it at start, so a kernel
    // that cannot run where asked fails before training begins).
    void prepare() { ensure_kernels(); }
    // Where each kernel of the current set runs, one entry per kernel name (the static
    // pipeline's per-layer copies are one entry; the first copy that fell back speaks for them).
    std::vector<Placement> placements() const;
    bool ane_shaped() const { return kernel_options_.ane_shaped; }
    // Frees every compiled kernel (before an exec() restart: on the ANE this unloads the
    // programs and removes their model directories). The next step compiles them again.
    void release_kernels();

private:
    struct LayerActs;
    struct LayerKernels;
    struct PackedInput;

    // The model's tensors in one flat buffer (weights or gradients), resolved once, as llama2.c's
    // run.c keeps them, so nothing is looked up by name inside the layer loop.
    struct Params {
        struct Layer {
            float *wq, *wk, *wv, *wo, *w1, *w2, *w3;  // [out, in] row-major, as llama2.c stores them
            float *attention_norm, *ffn_norm;         // [dim]
            float *q_norm, *k_norm;                   // [head_dim] with QK-norm, else nullptr
        };
        // The field of a weight the kernels take by name ("wq".."w3", "q_norm", "k_norm"), looked
        // up once when the kernels are built; nullptr for an activation.
        using Field = float* Layer::*;
        static Field field(const std::string& kernel_input_name);
        float *tok_embeddings = nullptr, *norm = nullptr;
        float* classifier = nullptr;  // [vocab, dim]: tok_embeddings when tied, else "output"
        std::vector<Layer> layers;
    };
    Params resolve(std::vector<float>& flat) const;

    void ensure_kernels();
    bool static_kernels_current() const;  // static pipeline: kernels built from the current weights
    void forward_sequence(const int32_t* tok);
    // overwrite: the gradients are stale (see ModelState), write them instead of adding.
    // ready: see accumulate(); nullptr for all but the last sequence.
    // last: the batch's last sequence, whose weight-gradient products finish the gradients
    double backward_sequence(const int32_t* tok, bool overwrite, bool last, const GradsReady* ready);
    void weight_grad(float* dw, const float* dy, const float* x, int out, int in, float beta, bool last);
    // Hands a final gradient range to `ready` after the dW products queued before it.
    void grads_ready(const GradsReady* ready, std::pair<size_t, size_t> range);
    // A kernel input: fp32 data, and whether it holds fp16 values already (see HostTensor).
    struct In {
        const float* data;
        bool fp16_exact;
    };
    // A kernel's inputs: the given activations, then the layer's weights it takes by name.
    std::vector<In> inputs(const LayerKernels& ks, const std::string& kernel, int layer, std::vector<In> acts);
    // Evaluates layer `layer`'s kernel `kernel` on activations `acts` (the kernel's activation
    // inputs in order; the weights are added by name) into `out` (the results consecutive).
    void run(int layer, const std::string& kernel, std::vector<In> acts, float* out);
    void eval(backend::Kernel& k, const std::vector<In>& in, const std::vector<float*>& out);
    void stage_weights(int layer);
    static void check_result_sizes(const LayerKernels& ks, const LayerActs& a);  // ANE-shaped dynamic: the layer's weights into its input buffers

    ModelState state_;
    Params w_, g_;  // views of state_.weights and state_.grads (their storage never moves)
    // [offset, count) of the gradients per layer, and of norm and tok_embeddings (GradsReady)
    std::vector<std::pair<size_t, size_t>> layer_grads_;
    std::pair<size_t, size_t> norm_grads_, embedding_grads_;
    std::shared_ptr<backend::Backend> backend_;
    TrainerOptions opt_;
    mil::KernelShape shape_;
    mil::KernelOptions kernel_options_;
    std::vector<std::unique_ptr<LayerKernels>> kernels_;  // dynamic: one shared set; static: per layer
    uint64_t kernels_version_ = 0;  // the state's weights_version the static kernels were built from
    std::vector<std::unique_ptr<LayerActs>> acts_;
    // ANE-shaped: per layer, each kernel's packed fp16 input (weights staged in it, dynamic)
    std::vector<std::map<std::string, PackedInput>> packed_;
    std::vector<uint64_t> staged_version_;  // per layer: the weights_version its packed weights hold
    // Split fp16 dynamic kernels on ref read the state's fp16-rounded copy of the layer weights
    // (ModelState::rounded) as fp16 values instead of rounding the fp32 weights per evaluation.
    bool rounded_weights_ = false;
    std::vector<float> x_, x_final_, rrms_final_, logits_, dx_, tmp_;
    cpu::SoftmaxStats softmax_;  // of logits_, from the forward pass
    std::unique_ptr<threads::SerialQueue> dw_;  // the dW products, overlapped with kernels on another device
    int pending_ = 0;
    Timings timings_;
};

}  // namespace anetrain::train
