// The training step's fp32 CPU ops, forward and backward, on activations stored channel-major
// [C][S] for one sequence of S positions (the ANE's [1,C,1,S]): row c holds channel c for every
// position, contiguous. Weights are row-major as llama2.c stores them. Ops marked "accumulates"
// add into their output (callers zero it first); all others overwrite. Shapes are the caller's
// contract; the only data-dependent check is the token-id bound (std::out_of_range).
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace anetrain::train::cpu {

// x[d][s] = E[tok[s]][d]   (E is [vocab][dim]; x is [dim][S])
void embedding_fwd(const float* E, int vocab, int dim, const int32_t* tok, int S, float* x);
// dE[tok[s]][d] += dx[d][s]   (accumulates; repeated tokens add up)
void embedding_bwd(const float* dx, const int32_t* tok, int S, int vocab, int dim, float* dE);

// rrms[s] = 1/sqrt(mean_c x[c][s]^2 + eps);  y[c][s] = x[c][s] * rrms[s] * g[c]
void rmsnorm_fwd(const float* x, const float* g, int C, int S, float eps, float* y, float* rrms);
// dx[c][s] += rrms[s] * (g[c] dy[c][s] - x[c][s] rrms[s]^2 mean_c'(g dy x)[s]);
// dg[c] += sum_s dy[c][s] x[c][s] rrms[s]   (both accumulate)
void rmsnorm_bwd(const float* dy, const float* x, const float* g, const float* rrms, int C, int S, float* dx,
                 float* dg);

// Per-position softmax statistics over the vocabulary axis of logits [vocab][S]:
// max[s] = max_v logits[v][s] and sum[s] = sum_v exp(logits[v][s] - max[s]).
struct SoftmaxStats {
    std::vector<float> max;
    std::vector<double> sum;
};

// logits[v][s] = sum_d E[v][d] x[d][s]   (E the classifier; logits [vocab][S]). With `stats`, also
// gathers the softmax statistics of the logits, chunk by chunk while each is still in cache.
void classifier_fwd(const float* E, const float* x, int vocab, int dim, int S, float* logits,
                    SoftmaxStats* stats = nullptr);
// cross_entropy and classifier_bwd in one pass over chunks of the vocabulary, each chunk's
// gradient made and consumed by both products while it is in cache. `stats` come from
// classifier_fwd on these logits. Returns the mean loss; logits are overwritten by dlogits;
// dx = E^T dlogits (overwrites); dE += dlogits x^T (accumulates; overwrites when overwrite_dE).
// Deterministic for a given thread count.
double classifier_loss_bwd(const float* E, const float* x, float* logits, const SoftmaxStats& stats,
                           const int32_t* tgt, float scale, int vocab, int dim, int S, float* dx, float* dE,
                           bool overwrite_dE = false);
// out[c] += sum_s x[c][s], each row summed in double (accumulates)
void add_row_sums(const float* x, int C, int S, float* out);
// sum_i x[i]^2 accumulated in double, in fixed blocks of BlockSumSquares::kBlock elements
// (the result does not depend on the thread count)
double sum_squares(const float* x, size_t n);

// sum_squares of one array gathered piecewise: add() sums the blocks lying wholly inside a range
// (e.g. a tensor's gradient right after its product wrote it, while it is still in cache) and
// total() sums the blocks not summed yet, then every block's sum in order. The blocks are
// sum_squares' blocks, so the total has its bits whatever was summed when.
class BlockSumSquares {
public:
    static constexpr size_t kBlock = size_t(1) << 16;

    void reset(size_t n);                                 // an array of n elements, nothing summed
    void add(const float* x, size_t begin, size_t end);   // x: the whole array; [begin, end) in it
    double total(const float* x);

private:
    void sum_blocks(const float* x, size_t first, size_t last);  // blocks [first, last) not yet summed
    size_t n_ = 0;
    std::vector<double> partial_;
    std::vector<uint8_t> done_;
};
// The factor torch.nn.utils.clip_grad_norm_ applies: min(1, max_norm / (norm + 1e-6))
float clip_scale(double norm, float max_norm);
// out = a + b, element-wise (out may alias a or b).
void add(const float* a, const float* b, float* out, size_t n);

struct AdamW {
    float lr = 3e-4f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
};
// One decoupled AdamW update at step t (1-based) with gradient g' = grad_scale * g:
// m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2;  w -= lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd w)
// with wd = 0 when decay is false (norm gammas). clear_g (g itself, or null) is zeroed as it is read;
// rounded_w (or null) receives the new weights rounded to fp16 (in float storage).
void adamw_step(float* w, const float* g, float* m, float* v, size_t n, int t, const AdamW& opt, bool decay,
                float grad_scale = 1.f, float* clear_g = nullptr, float* rounded_w = nullptr);

}  // namespace anetrain::train::cpu
