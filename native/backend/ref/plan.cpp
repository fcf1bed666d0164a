// The ref backend's compile-time machinery: storage, views, literal/blob loading, the Builder.
#include "backend/ref/plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/fp16.h"
#include "core/threads.h"
#include "mil/blob.h"

namespace anetrain::backend::ref {

constexpr int64_t kMaxElements = int64_t(1) << 28;
constexpr size_t kMaxKernelBytes = size_t(4) << 30;

bool storable(DType d) {
    switch (d) {
        case DType::fp16: case DType::fp32: case DType::int32: case DType::int8: case DType::uint8: case DType::bool_:
            return true;
        default:
            return false;
    }
}

Store store_of(DType d) {
    switch (d) {
        case DType::fp16: case DType::fp32: return Store::f32;
        case DType::int32: return Store::i32;
        case DType::int8: return Store::i8;
        case DType::uint8: case DType::bool_: return Store::u8;
        default: throw mil::MilError(0, std::string("dtype ") + mil::dtype_name(d) + " is not supported by the ref backend");
    }
}

size_t store_size(Store s) { return s == Store::f32 || s == Store::i32 ? 4 : 1; }

int64_t View::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

bool View::contiguous() const {
    int64_t expect = 1;
    for (size_t i = shape.size(); i-- > 0;) {
        if (shape[i] != 1 && strides[i] != expect) return false;
        expect *= shape[i];
    }
    return true;
}

Shape contiguous_strides(const Shape& shape) {
    Shape s(shape.size());
    int64_t acc = 1;
    for (size_t i = shape.size(); i-- > 0;) {
        s[i] = acc;
        acc *= shape[i];
    }
    return s;
}

std::string shape_str(const Shape& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

int64_t Loop::rows() const {
    int64_t r = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) r *= shape[i];
    return r;
}

Loop make_loop(const Shape& shape, const std::vector<Shape>& strides) {
    Loop L;
    L.strides.resize(strides.size());
    for (size_t d = 0; d < shape.size(); ++d) {
        if (shape[d] == 1) continue;
        bool merge = !L.shape.empty();
        for (size_t k = 0; merge && k < strides.size(); ++k) merge = L.strides[k].back() == strides[k][d] * shape[d];
        if (merge) {
            L.shape.back() *= shape[d];
            for (size_t k = 0; k < strides.size(); ++k) L.strides[k].back() = strides[k][d];
        } else {
            L.shape.push_back(shape[d]);
            for (size_t k = 0; k < strides.size(); ++k) L.strides[k].push_back(strides[k][d]);
        }
    }
    // A long inner row (a contiguous tensor coalesces into one) is cut into rows of a few
    // thousand elements so that parallel_rows can spread it over the threads.
    if (!L.shape.empty() && L.shape.size() < 16 && L.shape.back() >= 2 * 8192)
        for (int64_t c : {4096, 2048, 1024, 512}) {
            if (L.shape.back() % c) continue;
            const int64_t rows = L.shape.back() / c;
            L.shape.back() = c;
            L.shape.insert(L.shape.end() - 1, rows);
            for (auto& st : L.strides) st.insert(st.end() - 1, st.back() * c);
            break;
        }
    for (int64_t d : shape)
        if (d == 0) L.shape.assign(1, 0);
    if (L.shape.empty() || L.shape[0] == 0) {
        int64_t n = L.shape.empty() ? 1 : 0;
        L.shape.assign(1, n);
        for (auto& s : L.strides) s.assign(1, 1);
    }
    return L;
}

void parallel_rows(int64_t rows, int64_t row_len, const std::function<void(int64_t, int64_t)>& fn) {
    constexpr int64_t kWork = 1 << 15;  // elements per chunk worth a thread hop
    if (rows <= 1 || rows * row_len < 2 * kWork) {
        if (rows > 0) fn(0, rows);
        return;
    }
    size_t grain = size_t(std::max<int64_t>(1, kWork / std::max<int64_t>(row_len, 1)));
    threads::parallel_for(size_t(rows), grain, [&](size_t b, size_t e) { fn(int64_t(b), int64_t(e)); });
}

template <class T>
static void copy_strided_t(const View& src, T* dst, const Shape& dst_strides) {
    Loop L = make_loop(src.shape, {src.strides, dst_strides});
    const T* s = src.as<T>();
    const int64_t n = L.inner(), ss = L.strides[0].back(), ds = L.strides[1].back();
    parallel_rows(L.rows(), n, [&](int64_t r0, int64_t r1) {
        for_rows<2>(L, r0, r1, [&](const int64_t* off) {
            const T* a = s + off[0];
            T* b = dst + off[1];
            if (ss == 1 && ds == 1) {
                std::memcpy(b, a, size_t(n) * sizeof(T));
            } else {
                for (int64_t i = 0; i < n; ++i) b[i * ds] = a[i * ss];
            }
        });
    });
}

void copy_strided(const View& src, void* dst, const Shape& dst_strides) {
    if (store_size(store_of(src.dtype)) == 4)
        copy_strided_t(src, static_cast<uint32_t*>(dst), dst_strides);
    else
        copy_strided_t(src, static_cast<uint8_t*>(dst), dst_strides);
}

// Float to integer: truncate toward zero (NumPy astype), saturate at the type's range, NaN -> 0.
template <class D>
static double saturate(double v) {
    if (std::isnan(v)) return 0.0;
    v = std::trunc(v);
    return std::min<double>(std::max<double>(v, double(std::numeric_limits<D>::min())), double(std::numeric_limits<D>::max()));
}

template <class S, class D>
static void convert_t(const View& src, D* dst, bool to_int) {
    Loop L = make_loop(src.shape, {src.strides, contiguous_strides(src.shape)});
    const S* s = src.as<S>();
    const int64_t n = L.inner(), ss = L.strides[0].back();
    for_rows<2>(L, 0, L.rows(), [&](const int64_t* off) {
        for (int64_t i = 0; i < n; ++i) {
            double v = double(s[off[0] + i * ss]);
            if (to_int) v = saturate<D>(v);
            dst[off[1] + i] = static_cast<D>(v);
        }
    });
}

template <class S>
static void convert_from(const View& src, void* dst, DType to) {
    switch (store_of(to)) {
        case Store::f32: convert_t<S, float>(src, static_cast<float*>(dst), false); break;
        case Store::i32: convert_t<S, int32_t>(src, static_cast<int32_t*>(dst), true); break;
        case Store::i8: convert_t<S, int8_t>(src, static_cast<int8_t*>(dst), true); break;
        case Store::u8:
            if (to == DType::bool_) {
                Loop L = make_loop(src.shape, {src.strides, contiguous_strides(src.shape)});
                const S* s = src.as<S>();
                uint8_t* d = static_cast<uint8_t*>(dst);
                for_rows<2>(L, 0, L.rows(), [&](const int64_t* off) {
                    for (int64_t i = 0; i < L.inner(); ++i) d[off[1] + i] = s[off[0] + i * L.strides[0].back()] != S(0);
                });
            } else {
                convert_t<S, uint8_t>(src, static_cast<uint8_t*>(dst), true);
            }
            break;
    }
}

void convert_into(const View& src, void* dst, DType to, bool round16) {
    switch (store_of(src.dtype)) {
        case Store::f32: convert_from<float>(src, dst, to); break;
        case Store::i32: convert_from<int32_t>(src, dst, to); break;
        case Store::i8: convert_from<int8_t>(src, dst, to); break;
        case Store::u8: convert_from<uint8_t>(src, dst, to); break;
    }
    if (to == DType::fp16 && round16) {
        float* p = static_cast<float*>(dst);
        size_t n = size_t(View{to, src.shape, {}, nullptr}.numel());
        fp16::round_f32(p, p, n);
    }
}

void* allocate(Arena& arena, DType dtype, int64_t numel, int line) {
    if (!storable(dtype))
        throw mil::MilError(line, std::string("dtype ") + mil::dtype_name(dtype) + " tensors are not supported by the ref backend");
    if (numel < 0 || numel > kMaxElements)
        throw mil::MilError(line, "tensor of " + std::to_string(numel) + " elements exceeds the ref backend's limit of " +
                                      std::to_string(kMaxElements) + " elements per tensor");
    size_t bytes = size_t(std::max<int64_t>(numel, 1)) * store_size(store_of(dtype));
    if (arena.bytes + bytes > kMaxKernelBytes)
        throw mil::MilError(line, "the kernel needs more than " + std::to_string(kMaxKernelBytes >> 30) +
                                      " GiB of buffers, the ref backend's limit; split the program");
    void* p = std::calloc(bytes + 64, 1);
    if (!p) throw mil::MilError(line, "out of memory allocating " + std::to_string(bytes) + " bytes");
    arena.buffers.emplace_back(p);
    arena.bytes += bytes;
    return p;
}

// Element count of a shape, or -1 when it exceeds the per-tensor limit (no overflow).
int64_t bounded_numel(const Shape& shape) {
    int64_t n = 1;
    for (int64_t d : shape) {
        if (d < 0) return -1;
        if (d == 0) return 0;
    }
    for (int64_t d : shape) {
        if (n > kMaxElements / d) return -1;
        n *= d;
    }
    return n;
}

// ------------------------------------------------------------------------------ literals

static void fill_numbers(const View& v, const std::vector<double>& nums, bool round16) {
    size_t n = nums.size();
    switch (store_of(v.dtype)) {
        case Store::f32:
            for (size_t i = 0; i < n; ++i) {
                float f = float(nums[i]);
                v.f()[i] = (v.dtype == DType::fp16 && round16) ? fp16::to_float(fp16::from_float(f)) : f;
            }
            break;
        case Store::i32:
            for (size_t i = 0; i < n; ++i) v.as<int32_t>()[i] = int32_t(nums[i]);
            break;
        case Store::i8:
            for (size_t i = 0; i < n; ++i) v.as<int8_t>()[i] = int8_t(nums[i]);
            break;
        case Store::u8:
            for (size_t i = 0; i < n; ++i) v.as<uint8_t>()[i] = uint8_t(nums[i]);
            break;
    }
}

static void fill_from_blob(const View& v, const mil::Literal& lit, int line, const Blobs& blobs) {
    auto it = blobs.find(lit.blob_path);
    if (it == blobs.end())
        throw mil::MilError(line, "blob file '" + lit.blob_path + "' was not provided; pass its bytes in weights");
    const std::string& file = it->second;
    const std::string where = "blob '" + lit.blob_path + "'";
    mil::blob::Record r;
    try {
        r = mil::blob::read_record(file, lit.blob_offset);
    } catch (const std::invalid_argument& e) {
        throw mil::MilError(line, where + ": " + e.what());
    }
    if (r.dtype != lit.type.dtype)
        throw mil::MilError(line, where + " holds " + mil::dtype_name(r.dtype) + " data but the literal is declared " +
                                      lit.type.str());
    if (!storable(r.dtype)) throw mil::MilError(line, where + " holds " + mil::dtype_name(r.dtype) + " data, which the ref backend cannot store");
    const uint64_t want = uint64_t(lit.type.numel()) * mil::dtype_size(r.dtype);
    if (r.size != want)
        throw mil::MilError(line, where + " holds " + std::to_string(r.size) + " bytes but " + lit.type.str() + " needs " +
                                      std::to_string(want));
    const char* src = file.data() + r.data_offset;
    if (r.dtype == DType::fp16) {
        std::vector<uint16_t> halves(size_t(lit.type.numel()));
        std::memcpy(halves.data(), src, r.size);
        fp16::f16_to_f32(halves.data(), v.f(), halves.size());
    } else {
        std::memcpy(v.data, src, r.size);
    }
}

Value load_literal(const mil::Literal& lit, int line, const Blobs& blobs, bool round16,
                   Arena& buffers) {
    Value val;
    val.is_const = true;
    val.view.dtype = lit.type.dtype;
    val.view.shape = lit.type.shape;
    val.view.strides = contiguous_strides(lit.type.shape);
    if (lit.type.dtype == DType::string) {
        val.strings = lit.strings;
        return val;
    }
    val.view.data = allocate(buffers, lit.type.dtype, lit.type.numel(), line);
    if (lit.is_blob)
        fill_from_blob(val.view, lit, line, blobs);
    else
        fill_numbers(val.view, lit.numbers, round16);
    return val;
}

// ------------------------------------------------------------------------------ Builder

Builder::Builder(const mil::Op& op, std::unordered_map<std::string, Value>& values, std::vector<PlanStep>& steps,
                 const Blobs& blobs, bool round16, Arena& buffers,
                 const std::unordered_map<std::string, Sink*>& sinks, Inputs& inputs)
    : op_(op), values_(values), steps_(steps), blobs_(blobs), round16_(round16), buffers_(buffers), sinks_(sinks),
      inputs_(inputs), defined_(op.outputs.size(), false) {}

void Builder::fail(const std::string& msg) const { throw mil::MilError(op_.line, op_.type + ": " + msg); }

const mil::Arg* Builder::lookup(const char* key) {
    if (std::find(used_.begin(), used_.end(), key) == used_.end()) used_.push_back(key);
    return op_.operand(key);
}

bool Builder::has(const char* key) { return lookup(key) != nullptr; }

const Value& Builder::resolve(const mil::Arg& a, const char* key, bool in_place) {
    if (a.kind == mil::Arg::Kind::Ref) {
        auto it = values_.find(a.ref);
        if (it == values_.end()) fail("'" + a.ref + "' (argument " + key + ") is not defined");
        // The op may read the view's pointer: the input behind it must be in the own buffer.
        if (!in_place && it->second.view.input >= 0) inputs_.loaded[size_t(it->second.view.input)] = true;
        return it->second;
    }
    if (a.kind == mil::Arg::Kind::Tuple) fail(std::string("argument ") + key + " must be a single value, not a tuple");
    temps_.push_back(std::make_unique<Value>(load_literal(a.literal, op_.line, blobs_, round16_, buffers_)));
    return *temps_.back();
}

const Value& Builder::value(const char* key) {
    const mil::Arg* a = lookup(key);
    if (!a) fail(std::string("missing required argument '") + key + "'");
    return resolve(*a, key);
}

const Value* Builder::optional(const char* key) {
    const mil::Arg* a = lookup(key);
    return a ? &resolve(*a, key) : nullptr;
}

const View& Builder::tensor(const char* key) {
    const Value& v = value(key);
    if (!storable(v.view.dtype)) fail(std::string("argument ") + key + " must be a numeric tensor, got " + mil::dtype_name(v.view.dtype));
    return v.view;
}

const View& Builder::tensor_ranged(const char* key) {
    const View& v = tensor_in_place(key);
    if (v.input >= 0) inputs_.exact_only[size_t(v.input)] = true;
    return v;
}

void Builder::reads_buffer(const View& v) {
    if (v.input >= 0) inputs_.loaded[size_t(v.input)] = true;
}

const View& Builder::tensor_in_place(const char* key) {
    const mil::Arg* a = lookup(key);
    if (!a) fail(std::string("missing required argument '") + key + "'");
    const Value& v = resolve(*a, key, true);
    if (!storable(v.view.dtype)) fail(std::string("argument ") + key + " must be a numeric tensor, got " + mil::dtype_name(v.view.dtype));
    return v.view;
}

std::vector<const Value*> Builder::values(const char* key) {
    const mil::Arg* a = lookup(key);
    if (!a) fail(std::string("missing required argument '") + key + "'");
    if (a->kind != mil::Arg::Kind::Tuple) fail(std::string("argument ") + key + " must be a tuple such as (a, b)");
    std::vector<const Value*> out;
    for (const auto& item : a->items) out.push_back(&resolve(item, key));
    return out;
}

static std::vector<double> read_numbers(const View& v) {
    std::vector<double> out(size_t(v.numel()));
    if (out.empty()) return out;
    std::vector<float> tmp(out.size());
    convert_into(v, tmp.data(), DType::fp32, false);
    // fp32 holds every int8/uint8/bool exactly; int32 constants are read exactly below.
    if (store_of(v.dtype) == Store::i32) {
        std::vector<int32_t> ints(out.size());
        convert_into(v, ints.data(), DType::int32, false);
        for (size_t i = 0; i < out.size(); ++i) out[i] = ints[i];
    } else {
        for (size_t i = 0; i < out.size(); ++i) out[i] = tmp[i];
    }
    return out;
}

std::vector<double> Builder::numbers(const char* key) {
    const Value& v = value(key);
    if (!v.is_const) fail(std::string("argument ") + key + " must be a compile-time constant");
    if (v.view.dtype == DType::string) fail(std::string("argument ") + key + " must be numeric, not a string");
    return read_numbers(v.view);
}

std::vector<int64_t> Builder::ints(const char* key) {
    const Value& v = value(key);
    if (v.view.dtype != DType::int32 && v.view.dtype != DType::int8 && v.view.dtype != DType::int16 &&
        v.view.dtype != DType::uint8 && v.view.dtype != DType::uint16)
        fail(std::string("argument ") + key + " must be an integer constant, got " + mil::dtype_name(v.view.dtype));
    if (v.view.rank() > 1) fail(std::string("argument ") + key + " must be a scalar or a 1-D list");
    std::vector<double> n = numbers(key);
    return std::vector<int64_t>(n.begin(), n.end());
}

int64_t Builder::int_scalar(const char* key, int64_t dflt, bool required) {
    if (!has(key)) {
        if (required) fail(std::string("missing required argument '") + key + "'");
        return dflt;
    }
    std::vector<int64_t> v = ints(key);
    if (v.size() != 1 || value(key).view.rank() != 0) fail(std::string("argument ") + key + " must be a scalar integer");
    return v[0];
}

bool Builder::bool_scalar(const char* key, bool dflt) {
    if (!has(key)) return dflt;
    const Value& v = value(key);
    if (v.view.dtype != DType::bool_ || v.view.rank() != 0) fail(std::string("argument ") + key + " must be a bool scalar");
    return numbers(key)[0] != 0;
}

std::string Builder::string_scalar(const char* key, const std::string& dflt, bool required) {
    if (!has(key)) {
        if (required) fail(std::string("missing required argument '") + key + "'");
        return dflt;
    }
    const Value& v = value(key);
    if (v.view.dtype != DType::string || v.strings.size() != 1) fail(std::string("argument ") + key + " must be a string");
    return v.strings[0];
}

double Builder::number_scalar(const char* key, double dflt) {
    if (!has(key)) return dflt;
    const Value& v = value(key);
    if (v.view.rank() != 0) fail(std::string("argument ") + key + " must be a scalar");
    return numbers(key)[0];
}

void Builder::require_float(const char* key, const View& v) {
    if (!mil::is_float(v.dtype))
        fail(std::string("argument ") + key + " must be fp16 or fp32, got " + mil::dtype_name(v.dtype));
}

void Builder::require_dtype(const char* key, const View& v, std::initializer_list<DType> ok) {
    for (DType d : ok)
        if (v.dtype == d) return;
    std::string names;
    for (DType d : ok) names += (names.empty() ? "" : "/") + std::string(mil::dtype_name(d));
    fail(std::string("argument ") + key + " must be " + names + ", got " + mil::dtype_name(v.dtype));
}

void Builder::check_declared(size_t i, DType dtype, const Shape& shape) {
    if (i >= op_.outputs.size())
        fail("produces " + std::to_string(i + 1) + " or more outputs but the statement declares " + std::to_string(op_.outputs.size()));
    const mil::Type& decl = op_.output_types[i];
    mil::Type got{dtype, decl.tensor, shape};
    if (!decl.same_value_type(got))
        fail("output '" + op_.outputs[i] + "' is declared " + decl.str() + " but the op produces " +
             mil::Type{dtype, true, shape}.str());
}

View Builder::alloc(DType dtype, const Shape& shape) {
    View v;
    v.dtype = dtype;
    v.shape = shape;
    v.strides = contiguous_strides(shape);
    int64_t n = bounded_numel(shape);
    if (n < 0) fail("a tensor of shape " + shape_str(shape) + " exceeds the ref backend's limit of " + std::to_string(kMaxElements) + " elements");
    v.data = allocate(buffers_, dtype, n, op_.line);
    return v;
}

View Builder::output(size_t i, DType dtype, const Shape& shape) {
    check_declared(i, dtype, shape);
    View v = alloc(dtype, shape);
    output_view(i, v);
    return v;
}

void Builder::output_view(size_t i, const View& v) {
    Value val;
    val.view = v;
    output_value(i, std::move(val));
}

void Builder::output_value(size_t i, Value v) {
    check_declared(i, v.view.dtype, v.view.shape);
    values_[op_.outputs[i]] = std::move(v);
    defined_[i] = true;
}

Source Builder::source(const View& v, bool converts) {
    Source s;
    s.own = v.data;
    if (v.input >= 0) {
        const size_t i = size_t(v.input);
        if (!converts) inputs_.exact_only[i] = true;
        s.in = &inputs_.feeds[i];
        s.bytes = static_cast<const char*>(v.data) - static_cast<const char*>(inputs_.own[i].data);
    }
    return s;
}

View Builder::contiguous(const View& v) {
    if (v.contiguous()) {
        View c = v;
        c.strides = contiguous_strides(v.shape);
        return c;
    }
    View c = alloc(v.dtype, v.shape);
    Shape strides = c.strides;
    void* dst = c.data;
    const Source src = source(v, false);
    // from: v, pointed at the elements of this evaluation (eval runs one plan at a time)
    add_step([from = v, src, dst, strides]() mutable {
        from.data = const_cast<void*>(src.data());
        copy_strided(from, dst, strides);
    });
    return c;
}

void Builder::add_ranged(Ranged r) {
    auto op = std::make_shared<const Ranged>(std::move(r));
    const AddressMap* feeds = &inputs_.in_place;
    steps_.push_back({[op, feeds] {
                          const int64_t a = op->align;
                          parallel_rows(op->numel / a, a, [&](int64_t r0, int64_t r1) { op->run(r0 * a, r1 * a, *feeds); });
                      },
                      op});
}

Ranged::Access ranged_access(const void* data, size_t elem, const Shape& shape, const Shape& strides) {
    Ranged::Access a;
    a.base = static_cast<const char*>(data);
    int64_t lo = 0, hi = 0;
    for (size_t d = 0; d < shape.size(); ++d) {
        const int64_t span = strides[d] * (shape[d] - 1);
        (span < 0 ? lo : hi) += span;
    }
    a.lo = a.base + lo * int64_t(elem);
    a.hi = a.base + (hi + 1) * int64_t(elem);
    // Element i is base[i / per] when the trailing dimensions of size 1 or stride 0 (broadcast)
    // make up `per` and the rest are laid out contiguously in index order.
    size_t d = shape.size();
    int64_t per = 1;
    for (; d > 0 && (shape[d - 1] == 1 || strides[d - 1] == 0); --d) per *= shape[d - 1];
    int64_t expect = 1;
    while (d-- > 0) {
        if (shape[d] == 1) continue;
        if (strides[d] != expect) return a;
        expect *= shape[d];
    }
    a.per = per;
    return a;
}

const Sink* Builder::claim_sink(size_t i) {
    auto it = sinks_.find(op_.outputs.at(i));
    if (it == sinks_.end()) return nullptr;
    it->second->claimed = true;
    return it->second;
}

void emit(const Sink* sink, bool round, float* own, size_t off, size_t n) {
    if (sink && sink->data && sink->dtype == DType::fp16) {
        fp16::f32_to_f16(own + off, static_cast<uint16_t*>(sink->data) + off, n);
    } else if (round) {
        float* p = target(sink, own) + off;
        fp16::round_f32(p, p, n);
    }
}

void Builder::finish() {
    for (size_t i = 0; i < defined_.size(); ++i)
        if (!defined_[i]) fail("the statement declares " + std::to_string(defined_.size()) + " outputs but the op produces " + std::to_string(i));
    auto is_used = [&](const std::string& k) { return std::find(used_.begin(), used_.end(), k) != used_.end(); };
    for (const auto& kv : op_.args)
        if (!is_used(kv.first)) fail("unknown argument '" + kv.first + "'");
    for (const auto& kv : op_.attrs) {
        if (kv.first == "name") {
            const mil::Arg& a = kv.second;
            if (a.kind != mil::Arg::Kind::Literal || a.literal.type.dtype != DType::string || a.literal.strings.size() != 1)
                fail("attribute name must be a string such as string(\"y\")");
            continue;
        }
        if (!is_used(kv.first)) fail("unknown attribute '" + kv.first + "'");
    }
}

// ------------------------------------------------------------------------------ numeric helpers

int64_t normalize_axis(Builder& b, int64_t axis, size_t rank, const char* what) {
    int64_t r = int64_t(rank);
    if (axis < -r || axis >= r)
        b.fail(std::string(what) + " " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
    return axis < 0 ? axis + r : axis;
}

bool broadcast_shapes(const Shape& a, const Shape& b, Shape* out) {
    size_t n = std::max(a.size(), b.size());
    out->assign(n, 1);
    for (size_t i = 0; i < n; ++i) {
        int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
        int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
        if (da != db && da != 1 && db != 1) return false;
        (*out)[i] = da == 1 ? db : da;
    }
    return true;
}

Shape broadcast_strides(const View& v, const Shape& out_shape) {
    Shape s(out_shape.size(), 0);
    size_t lead = out_shape.size() - v.shape.size();
    for (size_t i = 0; i < v.shape.size(); ++i)
        s[lead + i] = (v.shape[i] == 1 && out_shape[lead + i] != 1) ? 0 : v.strides[i];
    return s;
}

}  // namespace anetrain::backend::ref
