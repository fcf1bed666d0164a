// Data movement: reshape, transpose, slice_by_size, slice_by_index and split are views over the
// producer's storage (reshape copies only when the strides cannot express the new shape), so
// they take their operand in place (a program input behind it may stay in the caller's buffer);
// concat copies each input into its place; cast converts.
#include <algorithm>
#include <numeric>

#include "backend/ref/plan.h"

namespace anetrain::backend::ref {

namespace {

// Strides that view (old_shape, old_strides) as new_shape without copying, if possible.
bool reshape_strides(const Shape& old_shape, const Shape& old_strides, const Shape& new_shape, Shape* out) {
    Shape od, os;
    for (size_t i = 0; i < old_shape.size(); ++i)
        if (old_shape[i] != 1) {
            od.push_back(old_shape[i]);
            os.push_back(old_strides[i]);
        }
    const size_t on = od.size(), nn = new_shape.size();
    out->assign(nn, 1);
    size_t oi = 0, ni = 0;
    while (ni < nn && oi < on) {
        size_t oj = oi + 1, nj = ni + 1;
        int64_t np = new_shape[ni], op = od[oi];
        while (np != op) {
            if (np < op) {
                if (nj >= nn) return false;
                np *= new_shape[nj++];
            } else {
                if (oj >= on) return false;
                op *= od[oj++];
            }
        }
        for (size_t k = oi; k + 1 < oj; ++k)
            if (os[k] != od[k + 1] * os[k + 1]) return false;
        (*out)[nj - 1] = os[oj - 1];
        for (size_t k = nj - 1; k > ni; --k) (*out)[k - 1] = (*out)[k] * new_shape[k];
        ni = nj;
        oi = oj;
    }
    for (; ni < nn; ++ni)
        if (new_shape[ni] != 1) return false;
    return oi == on;
}

View offset_view(const View& v, int64_t elements) {
    View o = v;
    o.data = static_cast<char*>(v.data) + elements * int64_t(store_size(store_of(v.dtype)));
    return o;
}

void build_reshape(Builder& b) {
    const View& x = b.tensor_in_place("x");
    std::vector<int64_t> spec = b.ints("shape");
    Shape shape(spec.size());
    int64_t known = 1, infer = -1;
    for (size_t i = 0; i < spec.size(); ++i) {
        int64_t d = spec[i];
        if (d == 0 && spec.size() == x.rank()) d = x.shape[i];
        if (d == -1) {
            if (infer >= 0) b.fail("shape has more than one -1");
            infer = int64_t(i);
            continue;
        }
        if (d < 0) b.fail("shape entry " + std::to_string(spec[i]) + " is invalid");
        if (d > 0 && known > (int64_t(1) << 48) / d) b.fail("shape " + shape_str(Shape(spec.begin(), spec.end())) + " has too many elements");
        shape[i] = d;
        known *= d;
    }
    if (infer >= 0) {
        if (known == 0 || x.numel() % known != 0)
            b.fail("cannot infer -1 in shape " + shape_str(Shape(spec.begin(), spec.end())) + " for " + std::to_string(x.numel()) + " elements");
        shape[size_t(infer)] = x.numel() / known;
        known *= shape[size_t(infer)];
    }
    if (known != x.numel())
        b.fail("cannot reshape " + shape_str(x.shape) + " (" + std::to_string(x.numel()) + " elements) to " + shape_str(shape));
    Shape strides;
    if (x.numel() > 0 && reshape_strides(x.shape, x.strides, shape, &strides)) {
        View v = x;
        v.shape = shape;
        v.strides = strides;
        b.output_view(0, v);
        return;
    }
    View c = b.contiguous(x);
    c.shape = shape;
    c.strides = contiguous_strides(shape);
    b.output_view(0, c);
}

void build_transpose(Builder& b) {
    const View& x = b.tensor_in_place("x");
    std::vector<int64_t> perm = b.ints("perm");
    if (perm.size() != x.rank()) b.fail("perm has " + std::to_string(perm.size()) + " entries but x has rank " + std::to_string(x.rank()));
    std::vector<bool> seen(x.rank(), false);
    View v = x;
    for (size_t i = 0; i < perm.size(); ++i) {
        int64_t p = normalize_axis(b, perm[i], x.rank(), "perm entry");
        if (seen[size_t(p)]) b.fail("perm is not a permutation");
        seen[size_t(p)] = true;
        v.shape[i] = x.shape[size_t(p)];
        v.strides[i] = x.strides[size_t(p)];
    }
    b.output_view(0, v);
}

void build_slice_by_size(Builder& b) {
    const View& x = b.tensor_in_place("x");
    std::vector<int64_t> begin = b.ints("begin"), size = b.ints("size");
    if (begin.size() != x.rank() || size.size() != x.rank()) b.fail("begin and size must have one entry per dimension of x");
    View v = x;
    int64_t offset = 0;
    for (size_t i = 0; i < x.rank(); ++i) {
        int64_t dim = x.shape[i], bg = begin[i] < 0 ? begin[i] + dim : begin[i];
        int64_t sz = size[i] == -1 ? dim - bg : size[i];
        if (bg < 0 || bg > dim || sz < 0 || bg + sz > dim)
            b.fail("slice begin " + std::to_string(begin[i]) + " size " + std::to_string(size[i]) + " is out of range for dimension " +
                   std::to_string(i) + " of size " + std::to_string(dim));
        v.shape[i] = sz;
        offset += bg * x.strides[i];
    }
    b.output_view(0, offset_view(v, offset));
}

std::vector<bool> bool_list(Builder& b, const char* key, size_t n) {
    std::vector<bool> out(n, false);
    if (!b.has(key)) return out;
    if (b.value(key).view.dtype != DType::bool_) b.fail(std::string(key) + " must be a bool list");
    std::vector<double> v = b.numbers(key);
    if (v.size() != n) b.fail(std::string(key) + " must have one entry per dimension of x");
    for (size_t i = 0; i < n; ++i) out[i] = v[i] != 0;
    return out;
}

void build_slice_by_index(Builder& b) {
    const View& x = b.tensor_in_place("x");
    const size_t r = x.rank();
    std::vector<int64_t> begin = b.ints("begin"), end = b.ints("end");
    std::vector<int64_t> stride = b.has("stride") ? b.ints("stride") : std::vector<int64_t>(r, 1);
    std::vector<bool> bmask = bool_list(b, "begin_mask", r), emask = bool_list(b, "end_mask", r),
                      squeeze = bool_list(b, "squeeze_mask", r);
    if (begin.size() != r || end.size() != r || stride.size() != r) b.fail("begin, end and stride must have one entry per dimension of x");
    View v;
    v.dtype = x.dtype;
    v.data = x.data;
    v.input = x.input;
    int64_t offset = 0;
    for (size_t i = 0; i < r; ++i) {
        const int64_t dim = x.shape[i], s = stride[i];
        if (s == 0) b.fail("stride must not be 0");
        auto norm = [dim](int64_t v) { return v < 0 ? v + dim : v; };
        if (squeeze[i]) {
            int64_t idx = norm(begin[i]);
            if (idx < 0 || idx >= dim) b.fail("squeezed index " + std::to_string(begin[i]) + " is out of range for dimension " + std::to_string(i));
            offset += idx * x.strides[i];
            continue;
        }
        int64_t bg, e, len;
        if (s > 0) {
            bg = bmask[i] ? 0 : std::clamp<int64_t>(norm(begin[i]), 0, dim);
            e = emask[i] ? dim : std::clamp<int64_t>(norm(end[i]), 0, dim);
            len = e > bg ? (e - bg + s - 1) / s : 0;
        } else {
            bg = bmask[i] ? dim - 1 : std::clamp<int64_t>(norm(begin[i]), -1, dim - 1);
            e = emask[i] ? -1 : std::clamp<int64_t>(norm(end[i]), -1, dim - 1);
            len = bg > e ? (bg - e - s - 1) / (-s) : 0;
        }
        if (len > 0) offset += bg * x.strides[i];
        v.shape.push_back(len);
        v.strides.push_back(s * x.strides[i]);
    }
    b.output_view(0, offset_view(v, offset));
}

void build_concat(Builder& b) {
    std::vector<const Value*> vals = b.values("values");
    if (vals.empty()) b.fail("values is empty");
    const View& first = vals[0]->view;
    int64_t axis = normalize_axis(b, b.int_scalar("axis", 0, true), first.rank(), "axis");
    bool interleave = b.bool_scalar("interleave", false);
    Shape shape = first.shape;
    shape[size_t(axis)] = 0;
    for (const Value* v : vals) {
        const View& t = v->view;
        if (t.dtype != first.dtype) b.fail("all values must have the same dtype");
        if (t.rank() != first.rank()) b.fail("all values must have the same rank");
        for (size_t i = 0; i < t.rank(); ++i)
            if (int64_t(i) != axis && t.shape[i] != first.shape[i])
                b.fail("value shapes " + shape_str(first.shape) + " and " + shape_str(t.shape) + " differ outside axis " + std::to_string(axis));
        if (interleave && t.shape != first.shape) b.fail("interleave needs values of identical shapes");
        shape[size_t(axis)] += t.shape[size_t(axis)];
    }
    View out = b.output(0, first.dtype, shape);
    const int64_t k = int64_t(vals.size()), ax_stride = out.strides[size_t(axis)];
    int64_t at = 0;
    for (int64_t j = 0; j < k; ++j) {
        View src = vals[size_t(j)]->view;
        Shape dst_strides = out.strides;
        View dst = out;
        if (interleave) {
            dst_strides[size_t(axis)] = ax_stride * k;
            dst = offset_view(out, j * ax_stride);
        } else {
            dst = offset_view(out, at * ax_stride);
            at += src.shape[size_t(axis)];
        }
        void* dp = dst.data;
        b.add_step([src, dp, dst_strides] { copy_strided(src, dp, dst_strides); });
    }
}

void build_split(Builder& b) {
    const View& x = b.tensor_in_place("x");
    int64_t axis = normalize_axis(b, b.int_scalar("axis", 0, true), x.rank(), "axis");
    const int64_t dim = x.shape[size_t(axis)];
    std::vector<int64_t> sizes;
    if (b.has("split_sizes")) {
        sizes = b.ints("split_sizes");
        int64_t sum = 0;
        for (int64_t s : sizes) {
            if (s < 0) b.fail("split_sizes entries must be non-negative");
            sum += s;
        }
        if (sum != dim) b.fail("split_sizes sum to " + std::to_string(sum) + " but the axis has size " + std::to_string(dim));
        if (b.has("num_splits") && b.int_scalar("num_splits", 0) != int64_t(sizes.size())) b.fail("num_splits disagrees with split_sizes");
    } else {
        int64_t n = b.int_scalar("num_splits", 0, true);
        if (n <= 0 || dim % n != 0) b.fail("num_splits " + std::to_string(n) + " does not divide the axis size " + std::to_string(dim));
        sizes.assign(size_t(n), dim / n);
    }
    if (sizes.size() != b.num_outputs())
        b.fail("produces " + std::to_string(sizes.size()) + " outputs but the statement declares " + std::to_string(b.num_outputs()));
    int64_t at = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
        View v = offset_view(x, at * x.strides[size_t(axis)]);
        v.shape[size_t(axis)] = sizes[i];
        at += sizes[i];
        b.output_view(i, v);
    }
}

void build_cast(Builder& b) {
    const View& x = b.tensor("x");
    std::string name = b.string_scalar("dtype", "", true);
    DType to;
    if (!mil::dtype_from_name(name, &to) || !storable(to)) b.fail("cannot cast to '" + name + "'; use fp16, fp32, int32, int8, uint8 or bool");
    if (!storable(x.dtype)) b.fail("x must be a numeric tensor");
    View out = b.output(0, to, x.shape);
    const bool round = b.round16();
    b.add_step([x, out, to, round] { convert_into(x, out.data, to, round); });
}

}  // namespace

void register_shape_ops(std::map<std::string, BuildFn>& r) {
    r["reshape"] = build_reshape;
    r["transpose"] = build_transpose;
    r["slice_by_size"] = build_slice_by_size;
    r["slice_by_index"] = build_slice_by_index;
    r["concat"] = build_concat;
    r["split"] = build_split;
    r["cast"] = build_cast;
}

}  // namespace anetrain::backend::ref
