// quantize / dequantize / constexpr_affine_dequantize with scalar or per-axis scale and
// zero_point. Rounding rule: half to even (NumPy's np.round, which coremltools uses), computed
// as nearbyint(x / scale) in fp32, then + zero_point and clipped to the output type's range.
#include <cmath>

#include "backend/ref/plan.h"
#include "core/fp16.h"

namespace anetrain::backend::ref {

namespace {

// Per-element parameter access: index into a scalar or per-axis vector parameter.
struct AxisParams {
    View scale, zero;       // zero.data == nullptr: zero point 0
    Shape param_strides;    // over x's shape: 1 on the quantization axis (vector params), else 0
};

float element(const View& v, int64_t i) {
    switch (store_of(v.dtype)) {
        case Store::f32: return v.f()[i];
        case Store::i32: return float(v.as<int32_t>()[i]);
        case Store::i8: return float(v.as<int8_t>()[i]);
        case Store::u8: return float(v.as<uint8_t>()[i]);
    }
    return 0.0f;
}

AxisParams axis_params(Builder& b, const View& x, const char* scale_key, bool axis_required) {
    AxisParams p;
    const Value* scale = b.optional(scale_key);
    if (!scale) b.fail(std::string("missing required argument '") + scale_key + "'");
    p.scale = b.contiguous(scale->view);
    b.require_float(scale_key, p.scale);
    const Value* zero = b.optional("zero_point");
    if (zero) p.zero = b.contiguous(zero->view);
    const bool has_axis = b.has("axis");
    if (axis_required && !has_axis) b.fail("missing required argument 'axis'");
    int64_t axis = has_axis ? normalize_axis(b, b.int_scalar("axis", 0), x.rank(), "axis") : -1;
    p.param_strides.assign(x.rank(), 0);
    for (const View* v : {&p.scale, &p.zero}) {
        if (!v->data) continue;
        if (v->rank() > 1) b.fail("scale and zero_point must be scalars or 1-D vectors");
        if (v->numel() == 1) continue;
        if (axis < 0) b.fail("per-axis scale or zero_point needs the axis argument");
        if (v->numel() != x.shape[size_t(axis)])
            b.fail("scale/zero_point have " + std::to_string(v->numel()) + " entries but axis " + std::to_string(axis) + " has size " +
                   std::to_string(x.shape[size_t(axis)]));
        p.param_strides[size_t(axis)] = 1;
    }
    return p;
}

// out = scale * (q - zero_point), elementwise over x's shape.
void dequantize_into(const View& q, const AxisParams& p, const View& out, bool round) {
    Loop L = make_loop(q.shape, {q.strides, p.param_strides, out.strides});
    const bool scalar_s = p.scale.numel() == 1, scalar_z = !p.zero.data || p.zero.numel() == 1;
    for_rows<3>(L, 0, L.rows(), [&](const int64_t* off) {
        for (int64_t i = 0; i < L.inner(); ++i) {
            const int64_t pi = off[1] + i * L.strides[1].back();
            const float s = element(p.scale, scalar_s ? 0 : pi);
            const float z = p.zero.data ? element(p.zero, scalar_z ? 0 : pi) : 0.0f;
            out.f()[off[2] + i] = s * (element(q, off[0] + i * L.strides[0].back()) - z);
        }
    });
    if (round) fp16::round_f32(out.f(), out.f(), size_t(out.numel()));
}

template <class T>
void quantize_into(const View& x, const AxisParams& p, const View& out, float lo, float hi) {
    Loop L = make_loop(x.shape, {x.strides, p.param_strides, out.strides});
    const bool scalar_s = p.scale.numel() == 1, scalar_z = !p.zero.data || p.zero.numel() == 1;
    T* o = out.as<T>();
    for_rows<3>(L, 0, L.rows(), [&](const int64_t* off) {
        for (int64_t i = 0; i < L.inner(); ++i) {
            const int64_t pi = off[1] + i * L.strides[1].back();
            const float s = element(p.scale, scalar_s ? 0 : pi);
            const float z = p.zero.data ? element(p.zero, scalar_z ? 0 : pi) : 0.0f;
            float q = std::nearbyint(x.f()[off[0] + i * L.strides[0].back()] / s) + z;
            q = std::isnan(q) ? 0.0f : std::min(std::max(q, lo), hi);
            o[off[2] + i] = T(q);
        }
    });
}

void build_quantize(Builder& b) {
    const View x = b.tensor("input");
    b.require_float("input", x);
    const std::string dt = b.string_scalar("output_dtype", "", true);
    DType to;
    if (dt == "int8") to = DType::int8;
    else if (dt == "uint8") to = DType::uint8;
    else b.fail("output_dtype must be \"int8\" or \"uint8\", got \"" + dt + "\"");
    AxisParams p = axis_params(b, x, "scale", false);
    if (p.zero.data && p.zero.dtype != to) b.fail(std::string("zero_point must be ") + dt + " to match output_dtype");
    View out = b.output(0, to, x.shape);
    View xc = x;
    if (to == DType::int8)
        b.add_step([xc, p, out] { quantize_into<int8_t>(xc, p, out, -128.0f, 127.0f); });
    else
        b.add_step([xc, p, out] { quantize_into<uint8_t>(xc, p, out, 0.0f, 255.0f); });
}

void build_dequantize(Builder& b) {
    const View q = b.tensor("input");
    b.require_dtype("input", q, {DType::int8, DType::uint8});
    AxisParams p = axis_params(b, q, "scale", false);
    if (p.zero.data && p.zero.dtype != q.dtype) b.fail(std::string("zero_point must be ") + mil::dtype_name(q.dtype) + " like input");
    View out = b.output(0, p.scale.dtype, q.shape);
    const bool round = b.rounds(out);
    b.add_step([q, p, out, round] { dequantize_into(q, p, out, round); });
}

// All operands are constants: expanded once at compile time into a constant tensor.
void build_constexpr_affine_dequantize(Builder& b) {
    const Value& qv = b.value("quantized_data");
    const View q = qv.view;
    b.require_dtype("quantized_data", q, {DType::int8, DType::uint8});
    if (!qv.is_const) b.fail("quantized_data must be a constant");
    AxisParams p = axis_params(b, q, "scale", true);
    if (!b.has("zero_point")) b.fail("missing required argument 'zero_point'");
    b.require_dtype("zero_point", p.zero, {DType::int8, DType::uint8, DType::fp32});
    Value out;
    out.is_const = true;
    out.view = b.alloc(p.scale.dtype, q.shape);
    dequantize_into(q, p, out.view, b.rounds(out.view));
    b.output_value(0, out);
}

}  // namespace

void register_quant_ops(std::map<std::string, BuildFn>& r) {
    r["quantize"] = build_quantize;
    r["dequantize"] = build_dequantize;
    r["constexpr_affine_dequantize"] = build_constexpr_affine_dequantize;
}

}  // namespace anetrain::backend::ref
