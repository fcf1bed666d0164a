#include "train/model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "core/fp16.h"
#include "core/threads.h"

namespace anetrain::train {
namespace {

// splitmix64's output function: a well-mixed 64-bit value from any 64-bit counter.
uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Uniform in (0, 1] from the top 53 bits.
double unit_interval(uint64_t bits) { return (double(bits >> 11) + 1.0) * 0x1.0p-53; }

// Element i of a standard-normal stream named by `key` (Box-Muller on two counter draws).
float standard_normal(uint64_t key, uint64_t i) {
    const double u1 = unit_interval(mix64(key ^ mix64(2 * i)));
    const double u2 = unit_interval(mix64(key ^ mix64(2 * i + 1)));
    return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The init standard deviation of one tensor (0 for the RMSNorm gammas, which start at 1).
double init_std(const ParamSpec& p, int n_layers) {
    if (p.vector) return 0.0;
    if (p.name == "tok_embeddings") return 0.02;
    double sd = 1.0 / std::sqrt(double(p.cols));  // fan-in of a [out][in] linear
    if (ends_with(p.name, ".wo") || ends_with(p.name, ".w2")) sd /= std::sqrt(2.0 * n_layers);
    return sd;
}

}  // namespace

ModelState::ModelState(const ModelConfig& cfg) : cfg_(cfg) {
    size_t offset = 0;
    for (auto& spec : param_specs(cfg)) {  // validates cfg
        index_[spec.name] = slots_.size();
        const size_t n = size_t(spec.numel());
        slots_.push_back({std::move(spec), offset});
        offset += n;
    }
    weights.assign(offset, 0.f);
    grads.assign(offset, 0.f);
    adam_m.assign(offset, 0.f);
    adam_v.assign(offset, 0.f);
}

const ParamSlot* ModelState::find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &slots_[it->second];
}

const ParamSlot& ModelState::slot(const std::string& name) const {
    if (const ParamSlot* s = find(name)) return *s;
    throw std::invalid_argument("unknown parameter '" + name +
                                "'; names are llama2.c's, e.g. tok_embeddings, layers.0.attention.wq, norm");
}

void ModelState::init_random(uint64_t seed) {
    for (size_t t = 0; t < slots_.size(); ++t) {
        const ParamSlot& s = slots_[t];
        const double sd = init_std(s.spec, cfg_.n_layers);
        const uint64_t key = mix64(seed ^ mix64(t + 1));  // each tensor its own stream
        float* w = weights.data() + s.offset;
        threads::parallel_for(size_t(s.spec.numel()), 16384, [&](size_t b, size_t e) {
            for (size_t i = b; i < e; ++i) w[i] = sd == 0.0 ? 1.f : float(sd * standard_normal(key, i));
        });
    }
    weights_changed();
    zero_grads();
    std::fill(adam_m.begin(), adam_m.end(), 0.f);
    std::fill(adam_v.begin(), adam_v.end(), 0.f);
    step = 0;
}

void ModelState::zero_grads() {
    grad_sums_live_ = false;
    std::fill(grads.begin(), grads.end(), 0.f);
    grads_stale_ = false;
}

void ModelState::materialize_grads() {
    grad_sums_live_ = false;
    if (grads_stale_) zero_grads();
}

void ModelState::grads_changing() {
    grad_sums_live_ = false;
    grad_sums_.reset(grads.size());
}

void ModelState::expose_grads() {
    materialize_grads();
    grads_exposed_ = true;
}

bool ModelState::take_stale_grads() {
    const bool was = grads_stale_;
    grads_stale_ = false;
    return was;
}

double ModelState::grad_norm() {
    if (grads_stale_) return 0.0;
    if (grad_sums_live_) return std::sqrt(grad_sums_.total(grads.data()));
    return std::sqrt(cpu::sum_squares(grads.data(), grads.size()));
}

void ModelState::adamw_update(const cpu::AdamW& opt, float grad_scale, bool clear_grads) {
    materialize_grads();
    ++step;
    weights_changed();
    const bool eager = clear_grads && grads_exposed_;
    // A live view may change the weights unseen: the copy is rounded afresh before use then.
    const bool round = !rounded_.empty() && !weights_exposed_;
    for (const ParamSlot& s : slots_) {
        const size_t o = s.offset, n = size_t(s.spec.numel());
        const bool in_span = o >= rounded_begin_ && o + n <= rounded_begin_ + rounded_.size();
        cpu::adamw_step(weights.data() + o, grads.data() + o, adam_m.data() + o, adam_v.data() + o, n, step, opt,
                        s.spec.decay, grad_scale, eager ? grads.data() + o : nullptr,
                        round && in_span ? rounded_.data() + (o - rounded_begin_) : nullptr);
    }
    if (clear_grads && !eager) grads_stale_ = true;
    if (round) rounded_version_ = weights_version_;  // every slot of the span was rounded
}

void ModelState::keep_rounded(size_t begin, size_t end) {
    if (end > weights.size() || begin > end) throw std::invalid_argument("keep_rounded: span outside the weights");
    if (rounded_begin_ == begin && rounded_.size() == end - begin) return;
    rounded_begin_ = begin;
    rounded_.assign(end - begin, 0.f);
    rounded_version_ = ~uint64_t(0);
}

void ModelState::refresh_rounded() {
    if (rounded_.empty() || (rounded_version_ == weights_version_ && !weights_exposed_)) return;
    const float* src = weights.data() + rounded_begin_;
    float* dst = rounded_.data();
    threads::parallel_for(rounded_.size(), size_t(1) << 16,
                          [&](size_t b, size_t e) { fp16::round_f32(src + b, dst + b, e - b); });
    rounded_version_ = weights_version_;
}

}  // namespace anetrain::train
