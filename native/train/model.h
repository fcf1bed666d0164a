// The model's trainable state: weights, gradients and AdamW moments as four flat fp32 buffers,
// every llama2.c tensor a contiguous row-major slice of each (same offsets in all four), so global
// passes (zeroing, the gradient norm) run over one array and per-tensor code takes pointers.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "train/config.h"
#include "train/cpu_ops.h"

namespace anetrain::train {

struct ParamSlot {
    ParamSpec spec;
    size_t offset = 0;  // first element in each flat buffer
};

class ModelState {
public:
    explicit ModelState(const ModelConfig& cfg);  // validates cfg; all buffers zero, step 0

    const ModelConfig& config() const { return cfg_; }
    const std::vector<ParamSlot>& slots() const { return slots_; }
    size_t size() const { return weights.size(); }  // elements per buffer
    const ParamSlot* find(const std::string& name) const;  // nullptr when the name is unknown
    const ParamSlot& slot(const std::string& name) const;  // throws std::invalid_argument when unknown

    // Seeded random init, the same on every platform (a counter-based generator, no std::
    // distributions): linears N(0, 1/fan_in), with wo and w2 (the residual-branch outputs) further
    // scaled by 1/sqrt(2 n_layers); tok_embeddings N(0, 0.02^2); RMSNorm gammas 1. Clears grads,
    // moments and the step count.
    void init_random(uint64_t seed);
    void zero_grads();
    // sqrt(sum of squared gradients) over every tensor, accumulated in double.
    double grad_norm();
    // The trainer gathers the norm's sums while the gradients are written (cpu::BlockSumSquares):
    // grads_changing() before an accumulation writes them, sum_grads(begin, end) once the
    // gradients in [begin, end) of the flat buffer are final (each weight gradient right after its
    // last product), grads_final() after the accumulation. grad_norm() then only sums what was
    // not summed, with the same bits. Any other write to the gradients (materialize_grads, a
    // live view) drops the sums.
    void grads_changing();
    void sum_grads(size_t begin, size_t end) { grad_sums_.add(grads.data(), begin, end); }
    void grads_final() { grad_sums_live_ = !grads_exposed_; }
    // One AdamW update of every tensor with g' = grad_scale * g (weight decay skipped for the
    // RMSNorm gammas); increments step first, so the first update uses step 1. clear_grads zeroes
    // the gradients (see below).
    void adamw_update(const cpu::AdamW& opt, float grad_scale, bool clear_grads = false);

    // Clearing the gradients after an update is lazy: the buffer keeps the old values, marked
    // stale, and the trainer's next accumulation overwrites every gradient instead of adding
    // (take_stale_grads), which saves a write pass over all of them per step. Anything else
    // that reads or writes `grads` calls materialize_grads() first, which zero-fills a stale
    // buffer. Once a live view of the buffer has been handed out (expose_grads), clearing is
    // eager again, since writes through the view cannot be seen.
    void materialize_grads();
    void expose_grads();
    bool take_stale_grads();  // true when stale (the caller overwrites every gradient); no longer stale

    // Counts changes to the weights (init, updates, set by name, a live view handed out), so that
    // what is built from them (the static pipeline's kernels) can tell when it is out of date.
    // After expose_weights (a writable view of the buffer) changes can no longer be seen, and
    // weights_exposed() says so.
    uint64_t weights_version() const { return weights_version_; }
    void weights_changed() { ++weights_version_; }
    void expose_weights() {
        weights_exposed_ = true;
        weights_changed();
    }
    bool weights_exposed() const { return weights_exposed_; }

    // A copy of the weights in [begin, end) of the flat buffer rounded to fp16 (in float storage),
    // for kernels that take the weights as fp16 values: the ref backend reads such a copy in
    // place instead of rounding every weight at every evaluation. Off until keep_rounded();
    // adamw_update then writes it as it updates the weights, and refresh_rounded() brings it up
    // to date after any other change.
    void keep_rounded(size_t begin, size_t end);
    void refresh_rounded();
    // The rounded copy of weights[i] for a pointer `w` to weights[i] inside the span.
    const float* rounded(const float* w) const { return rounded_.data() + (w - weights.data()) - rounded_begin_; }

    std::vector<float> weights, grads, adam_m, adam_v;
    int step = 0;  // AdamW updates applied so far

private:
    bool grads_stale_ = false, grads_exposed_ = false, weights_exposed_ = false;
    cpu::BlockSumSquares grad_sums_;
    bool grad_sums_live_ = false;
    uint64_t weights_version_ = 0;
    std::vector<float> rounded_;
    size_t rounded_begin_ = 0;
    uint64_t rounded_version_ = ~uint64_t(0);
    ModelConfig cfg_;
    std::vector<ParamSlot> slots_;
    std::unordered_map<std::string, size_t> index_;
};

}  // namespace anetrain::train
