// conv over 1-3 spatial dims: strides, dilations, groups, pad_type valid/same/same_lower/custom,
// optional bias. A 1x1 conv with unit strides and no padding is one sgemm per batch and group
// (the linear layer); everything else is im2col + sgemm per batch and group. x and weight from
// program inputs are read in the caller's buffer when it holds plain floats.
// Padding split for "same": total = max((ceil(in/stride)-1)*stride + (K-1)*dil + 1 - in, 0);
// "same" puts floor(total/2) before and the rest after, "same_lower" the other way round.
#include <climits>
#include <cstring>

#include "backend/ref/plan.h"
#include "core/blas.h"

namespace anetrain::backend::ref {

namespace {

struct ConvGeom {
    int64_t n = 0, cin = 0, cout = 0, groups = 1;
    int64_t in[3] = {1, 1, 1}, k[3] = {1, 1, 1}, out[3] = {1, 1, 1};
    int64_t stride[3] = {1, 1, 1}, dil[3] = {1, 1, 1}, pad_before[3] = {0, 0, 0};
    int64_t cin_g() const { return cin / groups; }
    int64_t cout_g() const { return cout / groups; }
    int64_t in_size() const { return in[0] * in[1] * in[2]; }
    int64_t out_size() const { return out[0] * out[1] * out[2]; }
    int64_t k_size() const { return k[0] * k[1] * k[2]; }
    bool pointwise() const {
        for (int i = 0; i < 3; ++i)
            if (k[i] != 1 || stride[i] != 1 || pad_before[i] != 0 || out[i] != in[i]) return false;
        return true;
    }
};

std::vector<int64_t> list_or(Builder& b, const char* key, size_t n, int64_t dflt) {
    if (!b.has(key)) return std::vector<int64_t>(n, dflt);
    std::vector<int64_t> v = b.ints(key);
    if (v.size() != n) b.fail(std::string(key) + " must have " + std::to_string(n) + " entries");
    return v;
}

// Column matrix [cin_g * K, out] of one batch item and group.
void im2col(const ConvGeom& g, const float* x, float* col) {
    const int64_t osz = g.out_size();
    int64_t row = 0;
    for (int64_t c = 0; c < g.cin_g(); ++c)
        for (int64_t kz = 0; kz < g.k[0]; ++kz)
            for (int64_t ky = 0; ky < g.k[1]; ++ky)
                for (int64_t kx = 0; kx < g.k[2]; ++kx, ++row) {
                    float* dst = col + row * osz;
                    const float* src = x + c * g.in_size();
                    for (int64_t oz = 0; oz < g.out[0]; ++oz) {
                        const int64_t iz = oz * g.stride[0] - g.pad_before[0] + kz * g.dil[0];
                        for (int64_t oy = 0; oy < g.out[1]; ++oy) {
                            const int64_t iy = oy * g.stride[1] - g.pad_before[1] + ky * g.dil[1];
                            float* d = dst + (oz * g.out[1] + oy) * g.out[2];
                            if (iz < 0 || iz >= g.in[0] || iy < 0 || iy >= g.in[1]) {
                                std::memset(d, 0, size_t(g.out[2]) * sizeof(float));
                                continue;
                            }
                            const float* s = src + (iz * g.in[1] + iy) * g.in[2];
                            for (int64_t ox = 0; ox < g.out[2]; ++ox) {
                                const int64_t ix = ox * g.stride[2] - g.pad_before[2] + kx * g.dil[2];
                                d[ox] = (ix >= 0 && ix < g.in[2]) ? s[ix] : 0.0f;
                            }
                        }
                    }
                }
}

void build_conv(Builder& b) {
    const View x0 = b.tensor_in_place("x"), w0 = b.tensor_in_place("weight");
    b.require_float("x", x0);
    b.require_float("weight", w0);
    const Value* bias = b.optional("bias");
    if (x0.rank() < 3 || x0.rank() > 5) b.fail("x must be [N, C, spatial...] with 1 to 3 spatial dims, got " + shape_str(x0.shape));
    if (w0.rank() != x0.rank()) b.fail("weight must have the same rank as x");
    const size_t nsp = x0.rank() - 2, off = 3 - nsp;
    ConvGeom g;
    g.n = x0.shape[0];
    g.cin = x0.shape[1];
    g.cout = w0.shape[0];
    g.groups = b.int_scalar("groups", 1);
    if (g.groups < 1 || g.cin % g.groups || g.cout % g.groups)
        b.fail("groups " + std::to_string(g.groups) + " must divide the input (" + std::to_string(g.cin) + ") and output (" +
               std::to_string(g.cout) + ") channels");
    if (w0.shape[1] != g.cin_g())
        b.fail("weight " + shape_str(w0.shape) + " needs " + std::to_string(g.cin_g()) + " input channels per group (x has " +
               std::to_string(g.cin) + ", groups " + std::to_string(g.groups) + ")");
    std::vector<int64_t> strides = list_or(b, "strides", nsp, 1), dil = list_or(b, "dilations", nsp, 1);
    std::string pad_type = b.string_scalar("pad_type", "valid");
    std::vector<int64_t> pad = list_or(b, "pad", 2 * nsp, 0);
    if (pad_type != "valid" && pad_type != "same" && pad_type != "same_lower" && pad_type != "custom")
        b.fail("pad_type '" + pad_type + "' is not valid, same, same_lower or custom");
    Shape out_shape = {g.n, g.cout};
    for (size_t i = 0; i < nsp; ++i) {
        const size_t a = off + i;
        g.in[a] = x0.shape[2 + i];
        g.k[a] = w0.shape[2 + i];
        g.stride[a] = strides[i];
        g.dil[a] = dil[i];
        if (strides[i] < 1 || dil[i] < 1) b.fail("strides and dilations must be positive");
        const int64_t dk = (g.k[a] - 1) * g.dil[a] + 1;
        int64_t before = 0, after = 0;
        if (pad_type == "custom") {
            before = pad[2 * i];
            after = pad[2 * i + 1];
            if (before < 0 || after < 0) b.fail("pad entries must be non-negative");
        } else if (pad_type != "valid") {
            const int64_t total = std::max<int64_t>((g.in[a] + g.stride[a] - 1) / g.stride[a] * g.stride[a] - g.stride[a] + dk - g.in[a], 0);
            before = pad_type == "same" ? total / 2 : total - total / 2;
            after = total - before;
        }
        g.pad_before[a] = before;
        const int64_t span = g.in[a] + before + after - dk;
        if (span < 0) b.fail("kernel (dilated size " + std::to_string(dk) + ") is larger than the padded input along spatial dim " + std::to_string(i));
        g.out[a] = span / g.stride[a] + 1;
        out_shape.push_back(g.out[a]);
    }
    if (bias) {
        b.require_float("bias", bias->view);
        if (bias->view.shape != Shape{g.cout}) b.fail("bias must be [" + std::to_string(g.cout) + "], got " + shape_str(bias->view.shape));
    }
    View out = b.output(0, x0.dtype, out_shape);
    if (g.cout_g() > INT_MAX || g.out_size() > INT_MAX || g.cin_g() * g.k_size() > INT_MAX) b.fail("conv too large for BLAS");
    const Source x = b.source(b.contiguous(x0), false), w = b.source(b.contiguous(w0), false);
    View bv = bias ? b.contiguous(bias->view) : View{};
    const bool pointwise = g.pointwise();
    float* col = pointwise ? nullptr : b.alloc(DType::fp32, {g.cin_g() * g.k_size(), g.out_size()}).f();
    const bool round = b.rounds(out);
    const Sink* sink = b.claim_sink(0);
    b.add_step([=] {
        const int64_t kk = g.cin_g() * g.k_size(), osz = g.out_size();
        float* dst = target(sink, out.f());
        for (int64_t n = 0; n < g.n; ++n) {
            for (int64_t gi = 0; gi < g.groups; ++gi) {
                const float* xs = x.f() + (n * g.cin + gi * g.cin_g()) * g.in_size();
                float* ys = dst + (n * g.cout + gi * g.cout_g()) * osz;
                const float* ws = w.f() + gi * g.cout_g() * kk;
                const float* cols = xs;
                if (!pointwise) {
                    im2col(g, xs, col);
                    cols = col;
                }
                if (kk == 0)
                    std::memset(ys, 0, size_t(g.cout_g() * osz) * sizeof(float));
                else if (osz > 0 && g.cout_g() > 0)
                    blas::sgemm(false, false, int(g.cout_g()), int(osz), int(kk), 1.0f, ws, int(kk), cols, int(osz), 0.0f, ys, int(osz));
            }
            float* y = dst + n * g.cout * osz;
            if (bv.data)
                for (int64_t c = 0; c < g.cout; ++c)
                    for (int64_t i = 0; i < osz; ++i) y[c * osz + i] += bv.f()[c];
            emit(sink, round, out.f(), size_t(n * g.cout * osz), size_t(g.cout * osz));
        }
    });
}

}  // namespace

void register_conv_ops(std::map<std::string, BuildFn>& r) { r["conv"] = build_conv; }

}  // namespace anetrain::backend::ref
