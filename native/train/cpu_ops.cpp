#include "train/cpu_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "core/blas.h"
#include "core/fp16.h"
#include "core/simd.h"
#include "core/threads.h"
#include "core/vec_math.h"

namespace anetrain::train::cpu {
namespace {

using threads::parallel_for;

constexpr size_t kElementGrain = 16384;  // element-wise loops: elements per task at least
constexpr size_t kColumnGrain = 32;      // per-position loops over [C][S]: columns per task at least

void check_tokens(const int32_t* tok, int S, int vocab, const char* what) {
    for (int s = 0; s < S; ++s)
        if (tok[s] < 0 || tok[s] >= vocab)
            throw std::out_of_range(std::string(what) + " id " + std::to_string(tok[s]) + " at position " +
                                    std::to_string(s) + " is outside the vocabulary [0, " + std::to_string(vocab) +
                                    "); the data and the model's vocab_size disagree");
}

}  // namespace

// ------------------------------------------------------------------------------ embedding

void embedding_fwd(const float* E, int vocab, int dim, const int32_t* tok, int S, float* x) {
    check_tokens(tok, S, vocab, "token");
    parallel_for(size_t(dim), 8, [&](size_t b, size_t e) {
        for (size_t d = b; d < e; ++d) {
            float* row = x + d * S;
            for (int s = 0; s < S; ++s) row[s] = E[size_t(tok[s]) * dim + d];
        }
    });
}

void embedding_bwd(const float* dx, const int32_t* tok, int S, int vocab, int dim, float* dE) {
    check_tokens(tok, S, vocab, "token");
    // Each task owns a range of embedding columns, so repeated tokens never race.
    parallel_for(size_t(dim), 8, [&](size_t b, size_t e) {
        for (size_t d = b; d < e; ++d) {
            const float* row = dx + d * S;
            for (int s = 0; s < S; ++s) dE[size_t(tok[s]) * dim + d] += row[s];
        }
    });
}

// ------------------------------------------------------------------------------ RMSNorm

namespace {
// RMSNorm forward of positions [b, e).
ANETRAIN_HOT void rmsnorm_fwd_columns(const float* x, const float* g, int C, int S, float eps, float* y, float* rrms,
                                      size_t b, size_t e) {
    const size_t w = e - b;
    std::vector<double> ss(w, 0.0);
    for (int c = 0; c < C; ++c) {
        const float* xr = x + size_t(c) * S + b;
        for (size_t j = 0; j < w; ++j) ss[j] += double(xr[j]) * xr[j];
    }
    for (size_t j = 0; j < w; ++j) rrms[b + j] = float(1.0 / std::sqrt(ss[j] / C + eps));
    for (int c = 0; c < C; ++c) {
        const float* xr = x + size_t(c) * S + b;
        float* yr = y + size_t(c) * S + b;
        const float gc = g[c];
        for (size_t j = 0; j < w; ++j) yr[j] = xr[j] * rrms[b + j] * gc;
    }
}
}  // namespace

void rmsnorm_fwd(const float* x, const float* g, int C, int S, float eps, float* y, float* rrms) {
    parallel_for(size_t(S), kColumnGrain,
                 [&](size_t b, size_t e) { rmsnorm_fwd_columns(x, g, C, S, eps, y, rrms, b, e); });
}

namespace {
// RMSNorm backward to the input, positions [b, e) (adds into dx).
ANETRAIN_HOT void rmsnorm_bwd_columns(const float* dy, const float* x, const float* g, const float* rrms, int C, int S,
                                      float* dx, size_t b, size_t e) {
    const size_t w = e - b;
    std::vector<double> dot(w, 0.0);
    for (int c = 0; c < C; ++c) {
        const size_t o = size_t(c) * S + b;
        const float gc = g[c];
        for (size_t j = 0; j < w; ++j) dot[j] += double(gc * dy[o + j]) * x[o + j];
    }
    std::vector<float> coef(w);  // rrms^3 * mean_c(g dy x)
    for (size_t j = 0; j < w; ++j) {
        double r = rrms[b + j];
        coef[j] = float(r * r * r * dot[j] / C);
    }
    for (int c = 0; c < C; ++c) {
        const size_t o = size_t(c) * S + b;
        const float gc = g[c];
        for (size_t j = 0; j < w; ++j) dx[o + j] += rrms[b + j] * gc * dy[o + j] - x[o + j] * coef[j];
    }
}
}  // namespace

void rmsnorm_bwd(const float* dy, const float* x, const float* g, const float* rrms, int C, int S, float* dx,
                 float* dg) {
    parallel_for(size_t(S), kColumnGrain,
                 [&](size_t b, size_t e) { rmsnorm_bwd_columns(dy, x, g, rrms, C, S, dx, b, e); });
    parallel_for(size_t(C), 16, [&](size_t b, size_t e) {
        for (size_t c = b; c < e; ++c) {
            const float* dyr = dy + c * S;
            const float* xr = x + c * S;
            double acc = 0.0;
            for (int s = 0; s < S; ++s) acc += double(dyr[s] * xr[s]) * rrms[s];
            dg[c] += float(acc);
        }
    });
}

// ------------------------------------------------------------------------------ classifier and loss
//
// The logits [vocab][S] are the biggest tensor of the step (32.8 MB for Stories at S=256), so
// they are handled in chunks of vocabulary rows small enough to stay in a core's L2: each chunk's
// product, softmax statistics and gradient are made one after another while it is in cache,
// instead of separate passes over the whole tensor. Chunks are split across the threads; every
// per-chunk result is combined in chunk order, so results do not depend on scheduling.

namespace {

// Vocabulary rows per chunk: about 128K floats (512 KB) of logits.
int vocab_chunk(int S) { return std::max(16, 131072 / std::max(S, 1) / 16 * 16); }

// Per column s of a [n][S] block: mx[s] = max over the rows (NaNs ignored here; they reach the
// sum), sum[s] = sum over the rows of exp(z - mx[s]).
ANETRAIN_HOT void block_softmax_stats(const float* z, int n, int S, float* mx, float* sum) {
    for (int s = 0; s < S; ++s) mx[s] = -std::numeric_limits<float>::infinity();
    for (int r = 0; r < n; ++r) {
        const float* row = z + size_t(r) * S;
        for (int s = 0; s < S; ++s) mx[s] = row[s] > mx[s] ? row[s] : mx[s];
    }
    for (int s = 0; s < S; ++s) sum[s] = 0.f;
    for (int r = 0; r < n; ++r) {
        const float* row = z + size_t(r) * S;
        for (int s = 0; s < S; ++s) sum[s] += fast_exp(row[s] - mx[s]);
    }
}

// Combines per-chunk statistics (chunk c's at c*S) in chunk order.
void merge_softmax_stats(const std::vector<float>& cmax, const std::vector<float>& csum, int chunks, int S,
                         SoftmaxStats* st) {
    st->max.assign(size_t(S), -std::numeric_limits<float>::infinity());
    st->sum.assign(size_t(S), 0.0);
    for (int c = 0; c < chunks; ++c)
        for (int s = 0; s < S; ++s) st->max[s] = std::max(st->max[s], cmax[size_t(c) * S + s]);
    for (int c = 0; c < chunks; ++c)
        for (int s = 0; s < S; ++s)
            st->sum[s] += double(csum[size_t(c) * S + s]) * std::exp(double(cmax[size_t(c) * S + s]) - st->max[s]);
}

// dlogits of rows [r0, r0 + n) in place: scale * (softmax - onehot) / S, with k[s] = scale / (S sum[s]).
ANETRAIN_HOT void block_xent_grad(float* z, int r0, int n, int S, const float* mx, const float* k,
                                  const int32_t* tgt, float hit) {
    for (int r = 0; r < n; ++r) {
        float* row = z + size_t(r) * S;
        for (int s = 0; s < S; ++s) row[s] = fast_exp(row[s] - mx[s]) * k[s];
    }
    for (int s = 0; s < S; ++s)
        if (tgt[s] >= r0 && tgt[s] < r0 + n) z[size_t(tgt[s] - r0) * S + s] -= hit;
}

// Loss per position from the statistics; fills k[s] for block_xent_grad. Returns the mean.
double xent_loss(const float* logits, const SoftmaxStats& st, const int32_t* tgt, float scale, int S, float* k) {
    double total = 0.0;
    for (int s = 0; s < S; ++s) {
        total += std::log(st.sum[s]) + st.max[s] - logits[size_t(tgt[s]) * S + s];
        k[s] = float(scale / (double(S) * st.sum[s]));
    }
    return total / S;
}

// Softmax statistics of [vocab][S] logits chunk by chunk: produce(r0, n) first fills rows
// [r0, r0 + n) (or does nothing when the logits are there already), then their statistics
// are taken while the chunk is in cache. Chunks go to the threads one at a time
// (threads::for_each_item); per-chunk results merge in chunk order.
template <class Produce>
void chunked_softmax_stats(const float* logits, int vocab, int S, SoftmaxStats* st, Produce produce) {
    const int C = vocab_chunk(S), chunks = (vocab + C - 1) / C;
    std::vector<float> cmax(size_t(chunks) * S), csum(size_t(chunks) * S);
    threads::for_each_item(size_t(chunks), [&](size_t, size_t c) {
        const int r0 = int(c) * C, n = std::min(C, vocab - r0);
        produce(r0, n);
        block_softmax_stats(logits + size_t(r0) * S, n, S, cmax.data() + c * S, csum.data() + c * S);
    });
    merge_softmax_stats(cmax, csum, chunks, S, st);
}

void require_positions(int S, int vocab) {
    if (S <= 0 || vocab <= 0)
        throw std::invalid_argument("cross_entropy needs at least one position and one vocabulary entry (got S=" +
                                    std::to_string(S) + ", vocab=" + std::to_string(vocab) + ")");
}

}  // namespace

void classifier_fwd(const float* E, const float* x, int vocab, int dim, int S, float* logits, SoftmaxStats* stats) {
    if (!stats) return blas::sgemm(false, false, vocab, S, dim, 1.f, E, dim, x, S, 0.f, logits, S);
    require_positions(S, vocab);
    chunked_softmax_stats(logits, vocab, S, stats, [&](int r0, int n) {
        blas::sgemm_serial(false, false, n, S, dim, 1.f, E + size_t(r0) * dim, dim, x, S, 0.f, logits + size_t(r0) * S,
                           S);
    });
}

double classifier_loss_bwd(const float* E, const float* x, float* logits, const SoftmaxStats& st,
                           const int32_t* tgt, float scale, int vocab, int dim, int S, float* dx, float* dE,
                           bool overwrite_dE) {
    require_positions(S, vocab);
    check_tokens(tgt, S, vocab, "target");
    std::vector<float> k(static_cast<size_t>(S), 0.f);
    const double loss = xent_loss(logits, st, tgt, scale, S, k.data());
    const int C = vocab_chunk(S), chunks = (vocab + C - 1) / C;
    // Task t takes chunks t, t+T, ... and sums its dx in its own buffer (task 0 in dx itself).
    const int T = std::max(1, std::min(threads::num_threads(), chunks));
    std::vector<float> partial(size_t(T - 1) * dim * S);
    const float hit = scale / float(S);
    parallel_for(size_t(T), 1, [&](size_t b, size_t e) {
        for (size_t t = b; t < e; ++t) {
            float* acc = t == 0 ? dx : partial.data() + (t - 1) * size_t(dim) * S;
            for (int c = int(t); c < chunks; c += T) {
                const int r0 = c * C, n = std::min(C, vocab - r0);
                float* z = logits + size_t(r0) * S;
                block_xent_grad(z, r0, n, S, st.max.data(), k.data(), tgt, hit);
                blas::sgemm_serial(false, true, n, dim, S, 1.f, z, S, x, S, overwrite_dE ? 0.f : 1.f, dE + size_t(r0) * dim,
                                   dim);
                blas::sgemm_serial(true, false, dim, S, n, 1.f, E + size_t(r0) * dim, dim, z, S, c == int(t) ? 0.f : 1.f,
                                   acc, S);
            }
        }
    });
    for (int t = 1; t < T; ++t) add(dx, partial.data() + size_t(t - 1) * dim * S, dx, size_t(dim) * S);
    return loss;
}

// ------------------------------------------------------------------------------ norms, clipping

void add_row_sums(const float* x, int C, int S, float* out) {
    for (int c = 0; c < C; ++c) {
        const float* row = x + size_t(c) * S;
        double acc = 0.0;
        for (int s = 0; s < S; ++s) acc += row[s];
        out[c] += float(acc);
    }
}

namespace {
ANETRAIN_HOT double sum_squares_block(const float* x, size_t n) {
    constexpr size_t kLanes = 8;
    double lanes[kLanes] = {};  // independent partial sums, so the loop vectorises
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (size_t j = 0; j < kLanes; ++j) lanes[j] += double(x[i + j]) * x[i + j];
    double acc = 0.0;
    for (; i < n; ++i) acc += double(x[i]) * x[i];
    for (double l : lanes) acc += l;
    return acc;
}
}  // namespace

void BlockSumSquares::reset(size_t n) {
    n_ = n;
    const size_t blocks = (n + kBlock - 1) / kBlock;
    partial_.assign(blocks, 0.0);
    done_.assign(blocks, 0);
}

void BlockSumSquares::sum_blocks(const float* x, size_t first, size_t last) {
    if (first >= last) return;
    parallel_for(last - first, 1, [&](size_t b, size_t e) {
        for (size_t blk = first + b; blk < first + e; ++blk) {
            if (done_[blk]) continue;
            const size_t begin = blk * kBlock, end = std::min(n_, begin + kBlock);
            partial_[blk] = sum_squares_block(x + begin, end - begin);
            done_[blk] = 1;
        }
    });
}

void BlockSumSquares::add(const float* x, size_t begin, size_t end) {
    if (begin > end || end > n_) throw std::logic_error("BlockSumSquares::add: range outside the array");
    // the array's last block may be short: it lies inside the range when the range reaches the end
    sum_blocks(x, (begin + kBlock - 1) / kBlock, end == n_ ? partial_.size() : end / kBlock);
}

double BlockSumSquares::total(const float* x) {
    sum_blocks(x, 0, partial_.size());
    double total = 0.0;
    for (double p : partial_) total += p;
    return total;
}

double sum_squares(const float* x, size_t n) {
    BlockSumSquares sums;
    sums.reset(n);
    return sums.total(x);
}

float clip_scale(double norm, float max_norm) {
    if (!(max_norm > 0.f))
        throw std::invalid_argument("max_norm must be positive (got " + std::to_string(max_norm) + ")");
    return float(std::min(1.0, double(max_norm) / (norm + 1e-6)));
}

namespace {
ANETRAIN_HOT void add_chunk(const float* a, const float* b, float* out, size_t n) {
    for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
}  // namespace

void add(const float* a, const float* b, float* out, size_t n) {
    parallel_for(n, kElementGrain, [&](size_t lo, size_t hi) { add_chunk(a + lo, b + lo, out + lo, hi - lo); });
}

// ------------------------------------------------------------------------------ AdamW

namespace {
ANETRAIN_HOT void adamw_block(float* __restrict w, const float* g, float* __restrict m, float* __restrict v,
                              size_t n, float b1, float b2, float eps, float step_size, float inv_sqrt_bc2,
                              float keep, float grad_scale) {
    for (size_t i = 0; i < n; ++i) {
        const float gi = g[i] * grad_scale;
        const float mi = b1 * m[i] + (1.f - b1) * gi;
        const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * keep - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
    }
}

// Elements per block of a chunk: its gradients are zeroed and its weights rounded while the
// block is still in L1.
constexpr size_t kAdamBlock = 2048;

// dst[0, n) = src[0, n) with streaming stores where the CPU has them: dst is only written, so
// its lines need not be read into the cache first, which saves a read of every byte written.
// Other threads see the values after the writer's store_fence().
void stream_floats(float* dst, const float* src, size_t n) {
#if defined(__SSE2__)
    size_t i = 0;
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15); ++i) dst[i] = src[i];
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    for (; i < n; ++i) dst[i] = src[i];
#else
    std::memcpy(dst, src, n * sizeof(float));
#endif
}

void store_fence() {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}
}  // namespace

void adamw_step(float* w, const float* g, float* m, float* v, size_t n, int t, const AdamW& opt, bool decay,
                float grad_scale, float* clear_g, float* rounded_w) {
    if (t < 1) throw std::invalid_argument("AdamW step count must start at 1 (got " + std::to_string(t) + ")");
    const float b1 = opt.beta1, b2 = opt.beta2, eps = opt.eps;
    const float step_size = float(opt.lr / (1.0 - std::pow(double(b1), t)));
    const float inv_sqrt_bc2 = float(1.0 / std::sqrt(1.0 - std::pow(double(b2), t)));
    const float keep = decay ? 1.f - opt.lr * opt.weight_decay : 1.f;
    parallel_for(n, kElementGrain, [&](size_t b, size_t e) {
        float rounded[kAdamBlock];
        for (size_t i = b; i < e; i += kAdamBlock) {
            const size_t k = std::min(kAdamBlock, e - i);
            adamw_block(w + i, g + i, m + i, v + i, k, b1, b2, eps, step_size, inv_sqrt_bc2, keep, grad_scale);
            if (clear_g) std::memset(clear_g + i, 0, k * sizeof(float));
            if (rounded_w) {
                fp16::round_f32(w + i, rounded, k);
                stream_floats(rounded_w + i, rounded, k);
            }
        }
        if (rounded_w) store_fence();
    });
}

}  // namespace anetrain::train::cpu
