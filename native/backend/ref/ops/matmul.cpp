// matmul (NumPy batch broadcasting, 1-D promotion, transpose flags) and
// scaled_dot_product_attention. Strided 2-D operands go straight to BLAS through lda and the
// transpose flag whenever one of their strides is 1, so slice -> reshape -> transpose -> matmul
// chains never copy; otherwise the operand is made contiguous once per evaluation. Operands
// from program inputs are read in the caller's buffer; caller data that needs converting
// (fp16, or fp32 to round to fp16) is converted product by product when there are several.
// A square operand found at evaluation time to be zero on one side of its diagonal (causal
// attention's probabilities and score gradients) skips the products of that zero triangle.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/vec_math.h"
#include "backend/ref/plan.h"
#include "core/blas.h"
#include "core/fp16.h"
#include "core/threads.h"

namespace anetrain::backend::ref {

namespace {

// How BLAS reads a rows x cols matrix stored with strides (rs, cs).
struct MatLayout {
    bool ok = false;
    bool trans = false;
    int ld = 0;
};

MatLayout mat_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
    MatLayout m;
    // Strides of size-1 dimensions are free: pick whatever makes the layout legal.
    int64_t rs_n = rows == 1 ? std::max<int64_t>(cols, 1) : rs, cs_n = cols == 1 ? 1 : cs;
    if (cs_n == 1 && rs_n >= std::max<int64_t>(cols, 1) && rs_n <= INT_MAX) {
        m.ok = true;
        m.ld = int(rs_n);
        return m;
    }
    int64_t rs_t = rows == 1 ? 1 : rs, cs_t = cols == 1 ? std::max<int64_t>(rows, 1) : cs;
    if (rs_t == 1 && cs_t >= std::max<int64_t>(rows, 1) && cs_t <= INT_MAX) {
        m.ok = true;
        m.trans = true;
        m.ld = int(cs_t);
    }
    return m;
}

// Element offsets of every batch matrix of v (rank-2 trailing dims) over broadcast batch dims.
std::vector<int64_t> batch_offsets(const View& v, const Shape& batch) {
    Shape vb(v.shape.begin(), v.shape.end() - 2), vs(v.strides.begin(), v.strides.end() - 2);
    View bv{v.dtype, vb, vs, nullptr};
    Shape strides = broadcast_strides(bv, batch);
    int64_t n = 1;
    for (int64_t d : batch) n *= d;
    std::vector<int64_t> offs(size_t(n), 0);
    for (int64_t i = 0; i < n; ++i) {
        int64_t r = i, off = 0;
        for (size_t d = batch.size(); d-- > 0;) {
            off += (r % batch[d]) * strides[d];
            r /= batch[d];
        }
        offs[size_t(i)] = off;
    }
    return offs;
}

// A matmul operand as BLAS sees it: the view with its last two dims possibly swapped.
View matrix_view(const View& v, bool transpose) {
    View m = v;
    if (transpose) {
        std::swap(m.shape[m.rank() - 1], m.shape[m.rank() - 2]);
        std::swap(m.strides[m.rank() - 1], m.strides[m.rank() - 2]);
    }
    return m;
}

MatLayout operand_layout(Builder& b, View* m) {
    size_t r = m->rank();
    MatLayout l = mat_layout(m->shape[r - 2], m->shape[r - 1], m->strides[r - 2], m->strides[r - 1]);
    if (!l.ok) {
        *m = b.contiguous(*m);
        l = mat_layout(m->shape[r - 2], m->shape[r - 1], m->strides[r - 2], m->strides[r - 1]);
    }
    return l;
}

// A matmul operand as the products read it: product i's matrix starts offs[i] elements past
// the source's origin and is stored as `rows` rows of `cols` elements, layout.ld apart (the
// logical matrix transposed when layout.trans).
struct Operand {
    Source src;
    MatLayout layout;
    std::vector<int64_t> offs;
    int64_t rows = 0, cols = 0;
    bool converts = false;  // converts caller data per product (else its feed is always exact)

    // Product i's matrix as BLAS reads it, and its leading dimension: in place, or converted
    // into `scratch` (rows * cols floats) right before the product, while it is cache-hot.
    const float* matrix(size_t i, float* scratch, int* ld) const {
        const Feed feed = src.feed();
        if (feed == Feed::exact) {
            *ld = layout.ld;
            return src.f() + offs[i];
        }
        if (rows == 1 || layout.ld == cols)
            convert(feed, offs[i], scratch, rows * cols);
        else
            for (int64_t r = 0; r < rows; ++r) convert(feed, offs[i] + r * layout.ld, scratch + r * cols, cols);
        *ld = int(std::max<int64_t>(cols, 1));
        return scratch;
    }

    // n elements from `at` (elements past the source's origin) into `to`, as floats.
    void convert(Feed feed, int64_t at, float* to, int64_t n) const {
        if (feed == Feed::f16)
            fp16::f16_to_f32(src.halves() + at, to, size_t(n));
        else
            fp16::round_f32(src.f() + at, to, size_t(n));
    }

    // Logical rows (along_rows) or columns [start, start + count) of product i's matrix as BLAS
    // reads it (same transpose flag), with its leading dimension: in place for Feed::exact, else
    // converted into `scratch` (count times the other dimension floats).
    const float* slice(size_t i, bool along_rows, int64_t start, int64_t count, float* scratch, int* ld) const {
        const Feed feed = src.feed();
        // A slice of logical rows is a slice of storage rows unless the matrix is stored transposed.
        const bool storage_rows = along_rows != layout.trans;
        if (feed == Feed::exact) {
            *ld = layout.ld;
            return src.f() + offs[i] + (storage_rows ? start * layout.ld : start);
        }
        if (storage_rows) {
            for (int64_t r = 0; r < count; ++r) convert(feed, offs[i] + (start + r) * layout.ld, scratch + r * cols, cols);
            *ld = int(std::max<int64_t>(cols, 1));
        } else {
            for (int64_t r = 0; r < rows; ++r) convert(feed, offs[i] + r * layout.ld + start, scratch + r * count, count);
            *ld = int(std::max<int64_t>(count, 1));
        }
        return scratch;
    }
};

// ------------------------------------------------------------------------------ triangles
//
// Causal attention multiplies by matrices that are zero above (or below) the diagonal: the
// softmax of scores masked with -65504 underflows to exact zeros there. A product with such an
// operand runs as 4 blocks along the operand's diagonal, each over only the depth its block can
// reach: 10/16 of the multiply-adds remain. Whether an operand is triangular
// is read off its values at each evaluation (a dense matrix is told apart by its first and
// last rows), so the result is the full product's: the skipped terms are 0 * y, exactly 0 when the
// other operand is finite, which is checked too (0 * inf is NaN). Adding exact zeros changes no
// partial sum, so the results are bitwise those of the full products whenever BLAS sums the
// remaining terms in the same order (the attention kernels' outputs were identical).

// ANETRAIN_REF_TRIANGLES=0 turns the skipping off (to compare against the full products).
bool triangle_skipping() {
    static const bool on = [] {
        const char* e = std::getenv("ANETRAIN_REF_TRIANGLES");
        return !(e && std::string(e) == "0");
    }();
    return on;
}

// Square matrices from this size on are checked (below it the blocks cost more than they save).
constexpr int64_t kTriangleMin = 128;
constexpr int kTriangleBlocks = 4;

enum class Zeros : uint8_t { none, above, below };  // where a square matrix is all (+-)0

inline bool all_zero(const float* p, int64_t n) {
    uint32_t acc = 0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t u;
        std::memcpy(&u, p + i, 4);
        acc |= u & 0x7fffffffu;
    }
    return acc == 0;
}

// The zero triangle (strictly off the diagonal) of the n x n matrix stored row-major at p with
// leading dimension ld. Rows are scanned from the one with the most off-diagonal elements, so a
// dense matrix is rejected at once.
Zeros zero_triangle(const float* p, int64_t n, int64_t ld) {
    bool above = true, below = true;
    for (int64_t r = 0; r < n && (above || below); ++r) {
        if (above && !all_zero(p + r * ld + r + 1, n - r - 1)) above = false;
        const int64_t rb = n - 1 - r;  // the rows with the longest below-diagonal parts first
        if (below && !all_zero(p + rb * ld, rb)) below = false;
    }
    return above ? Zeros::above : below ? Zeros::below : Zeros::none;
}

// Whether every element of the rows x cols matrix at p (leading dimension ld) is finite.
bool all_finite(const float* p, int64_t rows, int64_t cols, int64_t ld) {
    for (int64_t r = 0; r < rows; ++r) {
        uint32_t bad = 0;
        const float* row = p + r * ld;
        for (int64_t c = 0; c < cols; ++c) {
            uint32_t u;
            std::memcpy(&u, row + c, 4);
            bad |= uint32_t((u & 0x7f800000u) == 0x7f800000u);
        }
        if (bad) return false;
    }
    return true;
}

using Gemm = void (*)(bool, bool, int, int, int, float, const float*, int, const float*, int, float, float*, int);

// Element (r, c) of the logical matrix of a BLAS operand (transposed when t) with leading dim ld.
inline const float* at(const float* p, bool t, int ld, int64_t r, int64_t c) { return t ? p + c * ld + r : p + r * ld + c; }

// C[M,N] = X Y (beta 0) when X (M == K) or Y (K == N) is square with a zero triangle and the
// other operand is finite, as blocks that skip the triangle. Returns false, doing nothing,
// when neither is.
bool triangular_product(Gemm gemm, bool tx, bool ty, int64_t M, int64_t N, int64_t K, const float* x, int lda,
                        const float* y, int ldb, float* c) {
    const bool y_sq = K == N && K >= kTriangleMin, x_sq = M == K && K >= kTriangleMin;
    Zeros zy = Zeros::none, zx = Zeros::none;
    if (y_sq) zy = zero_triangle(y, K, ldb);
    if (zy == Zeros::none && x_sq) zx = zero_triangle(x, K, lda);
    if (zy == Zeros::none && zx == Zeros::none) return false;
    const bool on_y = zy != Zeros::none;
    // The zero side of the logical matrix: storage "above" is logical "below" when transposed.
    const bool t = on_y ? ty : tx;
    const bool upper_zero = ((on_y ? zy : zx) == Zeros::above) != t;  // logical [i][j] = 0 for j > i
    if (on_y ? !all_finite(x, tx ? K : M, tx ? M : K, lda) : !all_finite(y, ty ? N : K, ty ? K : N, ldb)) return false;
    const int64_t n = K, bs = (n + kTriangleBlocks - 1) / kTriangleBlocks;
    for (int64_t b0 = 0; b0 < n; b0 += bs) {
        const int64_t nb = std::min(bs, n - b0);
        if (on_y) {
            // columns [b0, b0 + nb) of C read rows k of Y where Y[k][j] can be nonzero
            const int64_t k0 = upper_zero ? b0 : 0, k1 = upper_zero ? K : b0 + nb;
            gemm(tx, ty, int(M), int(nb), int(k1 - k0), 1.0f, at(x, tx, lda, 0, k0), lda, at(y, ty, ldb, k0, b0), ldb,
                 0.0f, c + b0, int(N));
        } else {
            // rows [b0, b0 + nb) of C read columns k of X where X[i][k] can be nonzero
            const int64_t k0 = upper_zero ? 0 : b0, k1 = upper_zero ? b0 + nb : K;
            gemm(tx, ty, int(nb), int(N), int(k1 - k0), 1.0f, at(x, tx, lda, b0, k0), lda, at(y, ty, ldb, k0, 0), ldb,
                 0.0f, c + b0 * N, int(N));
        }
    }
    return true;
}

// Per-product conversion is for matrices up to this size: beyond it the conversion is not
// cache-hot anyway, and copying the input in before the plan runs costs the same.
constexpr int64_t kScratchFloats = int64_t(1) << 20;

// A single product of at least this many multiply-adds whose bigger operand needs converting
// (a weight passed as fp32 to an fp16 program) runs as blocks of that operand's rows (or
// columns), each converted into its thread's scratch right before its product, instead of
// converting the whole operand into the kernel's own buffer first: the converted copy never
// leaves the cache.
constexpr int64_t kBlockedMacs = int64_t(1) << 22;
// Floats per converted block (1 MB: a core's L2 on the machines we measure).
constexpr int64_t kBlockFloats = int64_t(1) << 18;

Operand make_operand(Builder& b, View m, const Shape& batch, bool blocked = false) {
    Operand o;
    o.layout = operand_layout(b, &m);
    o.offs = batch_offsets(m, batch);
    const size_t r = m.rank();
    o.rows = o.layout.trans ? m.shape[r - 1] : m.shape[r - 2];
    o.cols = o.layout.trans ? m.shape[r - 2] : m.shape[r - 1];
    // Per product only when there are several products and each reads a matrix of its own (a
    // broadcast operand would be converted again for every product).
    int64_t matrices = 1;
    for (size_t d = 0; d + 2 < r; ++d) matrices *= m.shape[d];
    o.converts = m.input >= 0 && ((o.offs.size() > 1 && matrices == int64_t(o.offs.size()) &&
                                   o.rows * o.cols <= kScratchFloats) ||
                                  (blocked && o.offs.size() == 1));
    o.src = b.source(m, o.converts);
    return o;
}

void build_matmul(Builder& b) {
    View x = b.tensor_in_place("x"), y = b.tensor_in_place("y");
    b.require_float("x", x);
    b.require_float("y", y);
    bool tx = b.bool_scalar("transpose_x", false), ty = b.bool_scalar("transpose_y", false);
    if (x.rank() == 0 || y.rank() == 0) b.fail("x and y must have rank 1 or more");
    const bool x1 = x.rank() == 1, y1 = y.rank() == 1;
    if (x1) {
        x.shape.insert(x.shape.begin(), 1);
        x.strides.insert(x.strides.begin(), 0);
        tx = false;
    }
    if (y1) {
        y.shape.push_back(1);
        y.strides.push_back(0);
        ty = false;
    }
    View xm = matrix_view(x, tx), ym = matrix_view(y, ty);
    const int64_t M = xm.shape[xm.rank() - 2], K = xm.shape[xm.rank() - 1];
    const int64_t K2 = ym.shape[ym.rank() - 2], N = ym.shape[ym.rank() - 1];
    if (K != K2) b.fail("inner dimensions differ: x gives " + std::to_string(K) + ", y gives " + std::to_string(K2));
    Shape batch;
    if (!broadcast_shapes(Shape(xm.shape.begin(), xm.shape.end() - 2), Shape(ym.shape.begin(), ym.shape.end() - 2), &batch))
        b.fail("batch dimensions of " + shape_str(x.shape) + " and " + shape_str(y.shape) + " do not broadcast");
    Shape shape = batch;
    if (!x1) shape.push_back(M);
    if (!y1) shape.push_back(N);
    View out = b.output(0, x.dtype, shape);
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX) b.fail("matrix dimensions exceed the BLAS int range");

    size_t products = 1;
    for (int64_t d : batch) products *= size_t(d);
    // A single big product splits the bigger of M and N into blocks; the operand that is split
    // converts block by block when its data needs converting (see kBlockedMacs).
    const bool single = products == 1 && M * N * K >= kBlockedMacs;
    const bool split_rows = M >= N;
    Operand xo = make_operand(b, xm, batch, single && split_rows), yo = make_operand(b, ym, batch, single && !split_rows);
    const bool blocked = single && (split_rows ? xo.converts : yo.converts);
    const int64_t extent = split_rows ? M : N, depth = K;
    // Blocks of whole 16-row multiples, at most kBlockFloats converted, in a multiple of the
    // thread count so that the threads finish together.
    const int64_t T = threads::num_threads();
    int64_t block = 0;
    if (blocked) {
        int64_t nblocks = std::max<int64_t>(T, (extent * depth + kBlockFloats - 1) / kBlockFloats);
        nblocks = (nblocks + T - 1) / T * T;
        block = std::max<int64_t>(16, ((extent + nblocks - 1) / nblocks + 15) / 16 * 16);
    }
    // Several products (a batch): one per pool thread, each on one BLAS thread, so the batch
    // costs one synchronisation instead of one per product. A single product splits itself.
    const bool by_batch = products > 1 && T > 1;
    // Conversion scratch: one slot per thread, each product (or block) converts into its
    // thread's slot.
    const size_t slots = by_batch || (blocked && T > 1) ? size_t(T) : 1;
    const int64_t x_floats = blocked ? 0 : (xo.converts ? M * K : 0);
    const int64_t slot_floats = blocked ? block * depth : x_floats + (yo.converts ? K * N : 0);
    float* scratch = slot_floats ? b.alloc(DType::fp32, {int64_t(slots), slot_floats}).f() : nullptr;
    float* op = out.f();
    const bool round = b.rounds(out);
    const Sink* sink = b.claim_sink(0);
    const bool triangles = triangle_skipping();
    b.add_step([=] {
        const size_t mn = size_t(M * N);
        float* dst = target(sink, op);
        const Operand& split = split_rows ? xo : yo;
        if (blocked && split.src.feed() != Feed::exact) {
            // Blocks of the split operand, converted in the thread's slot, one product each.
            const int64_t nblocks = (extent + block - 1) / block;
            threads::for_each_item(size_t(nblocks), [&](size_t s, size_t k) {
                float* slot = scratch + s * slot_floats;
                const int64_t o = int64_t(k) * block, n = std::min(block, extent - o);
                int lda, ldb;
                if (split_rows) {
                    const float* a = xo.slice(0, true, o, n, slot, &lda);
                    const float* bm = yo.matrix(0, nullptr, &ldb);
                    blas::sgemm_serial(xo.layout.trans, yo.layout.trans, int(n), int(N), int(K), 1.0f, a, lda, bm, ldb,
                                       0.0f, dst + o * N, int(N));
                    emit(sink, round, op, size_t(o * N), size_t(n * N));
                } else {
                    const float* a = xo.matrix(0, nullptr, &lda);
                    const float* bm = yo.slice(0, false, o, n, slot, &ldb);
                    blas::sgemm_serial(xo.layout.trans, yo.layout.trans, int(M), int(n), int(K), 1.0f, a, lda, bm, ldb,
                                       0.0f, dst + o, int(N));
                }
            });
            if (!split_rows) emit(sink, round, op, 0, mn);  // column blocks are strided: finish at once
            return;
        }
        auto product = [&](size_t i, float* slot) {
            float* c = dst + i * mn;
            if (K == 0) {
                std::memset(c, 0, mn * sizeof(float));
            } else if (mn) {
                int lda, ldb;
                const float* a = xo.matrix(i, slot, &lda);
                const float* bm = yo.matrix(i, slot + x_floats, &ldb);
                const Gemm gemm = by_batch ? blas::sgemm_serial : blas::sgemm;
                if (!triangles || !triangular_product(gemm, xo.layout.trans, yo.layout.trans, M, N, K, a, lda, bm, ldb, c))
                    gemm(xo.layout.trans, yo.layout.trans, int(M), int(N), int(K), 1.0f, a, lda, bm, ldb, 0.0f, c, int(N));
            }
            emit(sink, round, op, i * mn, mn);
        };
        threads::for_each_item(products, [&](size_t s, size_t i) { product(i, scratch + s * slot_floats); });
    });
}

void build_sdpa(Builder& b) {
    const View q0 = b.tensor("query"), k0 = b.tensor("key"), v0 = b.tensor("value");
    b.require_float("query", q0);
    b.require_float("key", k0);
    b.require_float("value", v0);
    const Value* mask = b.optional("attn_mask");
    if (q0.rank() < 3 || k0.rank() != q0.rank() || v0.rank() != q0.rank()) b.fail("query, key and value must have the same rank, at least 3");
    const size_t r = q0.rank();
    const Shape batch(q0.shape.begin(), q0.shape.end() - 2);
    if (Shape(k0.shape.begin(), k0.shape.end() - 2) != batch || Shape(v0.shape.begin(), v0.shape.end() - 2) != batch)
        b.fail("query, key and value must share their batch dimensions");
    const int64_t L = q0.shape[r - 2], E = q0.shape[r - 1], S = k0.shape[r - 2], EV = v0.shape[r - 1];
    if (k0.shape[r - 1] != E) b.fail("key's last dimension must equal query's (" + std::to_string(E) + ")");
    if (v0.shape[r - 2] != S) b.fail("value's sequence dimension must equal key's (" + std::to_string(S) + ")");
    if (L < 1 || E < 1 || S < 1 || EV < 1) b.fail("query, key and value must have non-empty matrix dimensions");
    if (L > INT_MAX || E > INT_MAX || S > INT_MAX || EV > INT_MAX) b.fail("matrix dimensions exceed the BLAS int range");
    Shape scores_shape = batch;
    scores_shape.push_back(L);
    scores_shape.push_back(S);
    Shape mstrides;
    const void* mp = nullptr;
    bool mask_bool = false;
    if (mask) {
        const View& m = mask->view;
        b.require_dtype("attn_mask", m, {DType::fp16, DType::fp32, DType::bool_});
        Shape bs;
        if (!broadcast_shapes(m.shape, scores_shape, &bs) || bs != scores_shape)
            b.fail("attn_mask " + shape_str(m.shape) + " does not broadcast to " + shape_str(scores_shape));
        mstrides = broadcast_strides(m, scores_shape);
        mp = m.data;
        mask_bool = m.dtype == DType::bool_;
    }
    Shape out_shape = batch;
    out_shape.push_back(L);
    out_shape.push_back(EV);
    View out = b.output(0, q0.dtype, out_shape);
    View q = b.contiguous(q0), k = b.contiguous(k0), v = b.contiguous(v0);
    View scores = b.alloc(DType::fp32, {L, S});
    int64_t nb = 1;
    for (int64_t d : batch) nb *= d;
    const float scale = 1.0f / std::sqrt(float(E));
    const bool round = b.rounds(out);
    const Sink* sink = b.claim_sink(0);
    b.add_step([=] {
        float* sc = scores.f();
        for (int64_t i = 0; i < nb; ++i) {
            blas::sgemm(false, true, int(L), int(S), int(E), scale, q.f() + i * L * E, int(E), k.f() + i * S * E, int(E), 0.0f, sc, int(S));
            if (mp) {
                int64_t base = 0, rem = i;
                for (size_t d = batch.size(); d-- > 0;) {
                    base += (rem % batch[d]) * mstrides[d];
                    rem /= batch[d];
                }
                const int64_t ml = mstrides[r - 2], ms = mstrides[r - 1];
                for (int64_t l = 0; l < L; ++l)
                    for (int64_t s = 0; s < S; ++s) {
                        int64_t at = base + l * ml + s * ms;
                        if (mask_bool) {
                            if (!static_cast<const uint8_t*>(mp)[at]) sc[l * S + s] = -INFINITY;
                        } else {
                            sc[l * S + s] += static_cast<const float*>(mp)[at];
                        }
                    }
            }
            for (int64_t l = 0; l < L; ++l) softmax_row(sc + l * S, S);
            float* o = target(sink, out.f()) + i * L * EV;
            blas::sgemm(false, false, int(L), int(EV), int(S), 1.0f, sc, int(S), v.f() + i * S * EV, int(EV), 0.0f, o, int(EV));
            emit(sink, round, out.f(), size_t(i * L * EV), size_t(L * EV));
        }
    });
}

}  // namespace

void register_matmul_ops(std::map<std::string, BuildFn>& r) {
    r["matmul"] = build_matmul;
    r["scaled_dot_product_attention"] = build_sdpa;
}

}  // namespace anetrain::backend::ref
