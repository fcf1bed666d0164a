// Internals of the ref backend shared by the executor and the op families.
//
// Design: parse -> for each op, its family's build function validates operands, infers the
// output type (checked against the declared one) and appends Steps to the plan -> eval runs the
// Steps. Shapes are static, so every buffer is allocated at compile time and a Step is a closure
// over raw pointers, strides and precomputed sizes; eval does no lookups. Element-wise ops,
// softmax and row reductions add Ranged steps, and after the build runs of those are merged into
// steps that go over their tensors tile by tile (fuse.cpp; ANETRAIN_REF_FUSE=0 turns it off).
//
// Storage: fp16 and fp32 tensors are float arrays (fp16 values exactly representable in fp16),
// int32 as int32, int8 as int8, uint8 and bool as uint8. A View is shape + strides (in elements)
// + a pointer, so reshape/transpose/slice/split are views over the producer's buffer.
//
// Program inputs: each has a buffer of the kernel's own, but ops that read an input only
// through a Source (matmul, conv, the view ops, contiguous copies) find the caller's buffer
// there during an evaluation instead, and ranged ops (element-wise, softmax, row reductions)
// find it through AddressMap::at when it needs no conversion, so the kernel copies an input in only
// when some other op reads it, or a ranged op reads it and it needs converting (see Inputs).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"

namespace anetrain::backend::ref {

using mil::DType;
using Shape = std::vector<int64_t>;

// Element storage of a dtype (throws MilError for dtypes the ref backend cannot hold).
enum class Store : uint8_t { f32, i32, i8, u8 };
bool storable(DType d);
Store store_of(DType d);
size_t store_size(Store s);

struct View {
    DType dtype = DType::fp32;
    Shape shape;
    Shape strides;
    void* data = nullptr;
    int input = -1;  // the program input whose storage this view lies in (-1: none)

    int64_t numel() const;
    size_t rank() const { return shape.size(); }
    bool contiguous() const;
    float* f() const { return static_cast<float*>(data); }
    template <class T>
    T* as() const { return static_cast<T*>(data); }
};

Shape contiguous_strides(const Shape& shape);
std::string shape_str(const Shape& s);

// A named value during compilation.
struct Value {
    View view;
    bool is_const = false;           // produced by const / a literal: contents known at compile time
    std::vector<std::string> strings;  // string constants (no storage)
};

using Step = std::function<void()>;

// Where a ranged op finds its buffers: the buffer itself; for an intermediate of a fused run
// that no step after the run reads, scratch that holds only the tile's part of it, so that such
// intermediates never leave the cache (fuse.cpp); for a program input read in place, the
// caller's buffer (see Inputs). Ranged ops pass every buffer pointer they read or write through
// at().
struct AddressMap {
    struct Moved {
        const void* buffer;
        uintptr_t at;      // address of the buffer's element 0 as seen from here (scratch - first)
        size_t bytes = 0;  // 0: only `buffer` itself moves (an intermediate's whole-tensor pointer);
                           // else every pointer into [buffer, buffer + bytes) (views of an input)
    };
    std::vector<Moved> moved;
    template <class T>
    T* at(T* p) const {
        const char* c = reinterpret_cast<const char*>(p);
        for (const Moved& m : moved) {
            const char* b = static_cast<const char*>(m.buffer);
            if (c == b || (c > b && c < b + m.bytes)) return reinterpret_cast<T*>(m.at + uintptr_t(c - b));
        }
        return p;
    }
};

// An op computed range by range: run(b, e, tile) computes elements [b, e) of the op's index
// space on its own, serially, and any order of disjoint ranges gives the same result. This is
// what lets a run of such ops execute tile by tile, every op over one tile while its operands
// are in cache, instead of op by op over whole tensors (fuse.cpp). Results do not change: each
// op computes the same values; only the order of the work, and where dead intermediates live,
// does.
struct Ranged {
    // How the index space reaches a buffer: element i touches base[i / per] (per = 1: the same
    // element, as an element-wise output or a same-shape operand; per = n: one element per run
    // of n, as a row broadcast or a last-axis reduction's output), or, with per = 0, some other
    // pattern within the bytes [lo, hi).
    struct Access {
        const char* base = nullptr;
        int64_t per = 0;
        const char* lo = nullptr;
        const char* hi = nullptr;
    };
    int64_t numel = 0;  // size of the index space
    int64_t align = 1;  // ranges begin and end at multiples of this (rows of a row-wise op)
    std::vector<Access> reads, writes;  // float or int32 buffers (4-byte elements)
    std::function<void(int64_t, int64_t, const AddressMap&)> run;
};
// The access of an operand with data pointer `data` (elements of `elem` bytes) and `strides`
// over the index space `shape`, traversed in row-major order.
Ranged::Access ranged_access(const void* data, size_t elem, const Shape& shape, const Shape& strides);

// One step of the plan; `ranged`, when set, is the op that `run` computes over its whole index
// space, which fusion may run tile by tile with its neighbours instead.
struct PlanStep {
    Step run;
    std::shared_ptr<const Ranged> ranged;
};

// Bytes [lo, hi) that plan steps up to `step` may read (step = SIZE_MAX: the caller, reading a
// returned value). Fusion keeps an intermediate of a run in scratch only if no later step reads it.
struct Use {
    const char* lo;
    const char* hi;
    size_t step;
};

// Merges runs of consecutive ranged steps that can safely run tile by tile into one step each.
// Returns the plan steps [first, last) of each merged run (two steps or more) and its step.
struct FusedRun {
    size_t first, last;
    Step run;
};
// `feeds`: the kernel's input redirections (Inputs::tile), added to every tile's.
std::vector<FusedRun> fuse_plan(const std::vector<PlanStep>& plan, const std::vector<Use>& uses, const AddressMap* feeds);

// How the caller's data for a program input holds its values during one evaluation.
enum class Feed : uint8_t {
    exact,    // stored as the kernel stores them (floats for fp32, and for fp16 when not rounding)
    f16,      // fp16 halves, to convert to float
    round16,  // floats for an fp16 input, to round to fp16
};

// The program inputs of one kernel. `own` are the kernel's buffers. Before each evaluation the
// kernel sets `feeds`: the caller's buffer when the input is read in place, else the own buffer
// after copying/converting the input into it (Feed::exact). An input is read in place only when
// no op reads the own buffer directly (`loaded`), and, when the caller's data needs converting,
// when every reader can convert it (`exact_only` unset). Ops reach an input in place through a
// Source, or, for ranged ops, through `in_place`, which moves each own buffer read in place as
// Feed::exact to the caller's. Outside eval, feeds hold the own buffers and in_place moves nothing.
struct Inputs {
    std::vector<View> own;
    struct In {
        const void* data = nullptr;
        Feed feed = Feed::exact;
    };
    std::vector<In> feeds;
    AddressMap in_place;  // program inputs read in place: own buffer -> the caller's (during eval)
    std::vector<bool> loaded, exact_only;  // compile time, per input
};

// A view's elements as an op finds them during an evaluation: for a view into a program input,
// the same elements of whichever buffer the kernel feeds the input from; else the view itself.
struct Source {
    const void* own = nullptr;           // the view's origin (kernel storage)
    const Inputs::In* in = nullptr;      // the feed of the input the view lies in, if any
    int64_t bytes = 0;                   // offset of the origin in the input's own buffer
    Feed feed() const { return in ? in->feed : Feed::exact; }
    // The origin, for Feed::exact and Feed::round16 (data laid out as the kernel stores it).
    const void* data() const { return in ? static_cast<const char*>(in->data) + bytes : own; }
    const float* f() const { return static_cast<const float*>(data()); }
    // The origin, for Feed::f16 (the input is stored as floats: 4 bytes per element).
    const uint16_t* halves() const { return static_cast<const uint16_t*>(in->data) + bytes / 4; }
};

// All buffers of one kernel, allocated at compile time (zero-filled), with a size cap so that
// no program can make the process allocate without bound.
struct Arena {
    struct Free {
        void operator()(void* p) const { std::free(p); }
    };
    std::vector<std::unique_ptr<void, Free>> buffers;  // calloc'd: untouched pages cost nothing
    size_t bytes = 0;
};

// Where a returned op output goes during one evaluation: the caller's buffer (fp16 or fp32),
// written by the producing op while its result is still in cache. Only outputs no later op
// reads are bound this way; the kernel sets `data` before running the plan.
struct Sink {
    void* data = nullptr;
    DType dtype = DType::fp32;
    bool claimed = false;  // an op writes it (set at compile time by Builder::claim_sink)
};
// Where a float op writes its output: straight into the caller's buffer when an fp32 sink is
// bound, else into its own buffer `own`.
inline float* target(const Sink* sink, float* own) {
    return sink && sink->data && sink->dtype == DType::fp32 ? static_cast<float*>(sink->data) : own;
}
// Finish elements [off, off + n) after the op wrote them to target(sink, own): round to fp16
// when `round`, and convert into an fp16 sink (conversion rounds).
void emit(const Sink* sink, bool round, float* own, size_t off, size_t n);

// Strided copy of src into dst (same storage type), dst described by its own strides.
void copy_strided(const View& src, void* dst, const Shape& dst_strides);
// Copy/convert any view into a contiguous buffer of dtype `to` (cast semantics: float->int
// truncates toward zero; fp16 targets are rounded to fp16 when round16).
void convert_into(const View& src, void* dst, DType to, bool round16);

// The compile-time context of one op; op families talk to the plan only through it.
class Builder {
public:
    Builder(const mil::Op& op, std::unordered_map<std::string, Value>& values, std::vector<PlanStep>& steps,
            const Blobs& blobs, bool round16, Arena& buffers,
            const std::unordered_map<std::string, Sink*>& sinks, Inputs& inputs);

    const mil::Op& op() const { return op_; }
    bool round16() const { return round16_; }

    // Operands, looked up in (...) then [...]. Each lookup marks the key as used; keys never
    // looked up are reported as unknown arguments after the build.
    bool has(const char* key);
    const Value& value(const char* key);            // required operand (ref or literal)
    const Value* optional(const char* key);          // nullptr when absent
    std::vector<const Value*> values(const char* key);  // a tuple operand
    const View& tensor(const char* key);            // a required numeric operand
    // The same for an op that reads the operand only through source() and contiguous() (or not
    // at all: views), so a program input behind it can stay in the caller's buffer. Every
    // other accessor makes the kernel copy such an input into its own buffer first.
    const View& tensor_in_place(const char* key);
    // The same for a ranged op that reads the operand only through AddressMap::at (the input behind it
    // is then read in place when its data needs no conversion).
    const View& tensor_ranged(const char* key);
    // Declares that a step reads v's buffer by its pointer (a program input behind it is copied in).
    void reads_buffer(const View& v);

    // Compile-time constants (the operand must be a const or a literal).
    std::vector<int64_t> ints(const char* key);
    int64_t int_scalar(const char* key, int64_t dflt, bool required = false);
    bool bool_scalar(const char* key, bool dflt);
    std::string string_scalar(const char* key, const std::string& dflt, bool required = false);
    std::vector<double> numbers(const char* key);   // const numeric contents, row-major
    double number_scalar(const char* key, double dflt);

    // Checks that raise a MilError naming the op's line.
    void require_float(const char* key, const View& v);
    void require_dtype(const char* key, const View& v, std::initializer_list<DType> ok);
    [[noreturn]] void fail(const std::string& msg) const;

    // Outputs: a new contiguous buffer, or a view of existing storage. The inferred type is
    // checked against the declared one.
    size_t num_outputs() const { return op_.outputs.size(); }
    View output(size_t i, DType dtype, const Shape& shape);
    void output_view(size_t i, const View& v);
    void output_value(size_t i, Value v);  // constants and anything else fully formed

    // Where a step finds v's elements (see Source). `converts`: the op handles every Feed;
    // otherwise the input behind v is read in place only when its data needs no conversion.
    Source source(const View& v, bool converts);
    // A contiguous version of v: v itself, or a new buffer filled by a copy step.
    View contiguous(const View& v);
    View alloc(DType dtype, const Shape& shape);  // contiguous scratch/output storage
    void add_step(Step s) { steps_.push_back({std::move(s), nullptr}); }
    // A step that runs r over its whole index space in parallel chunks; fusion may instead run
    // it tile by tile with the ranged steps next to it.
    void add_ranged(Ranged r);
    // Whether a float output of dtype fp16 is rounded in this precision mode.
    bool rounds(const View& out) const { return round16_ && out.dtype == DType::fp16; }
    // The sink of float output i when it is returned and read by no later op (else nullptr);
    // an op that takes it must write every element through emit().
    const Sink* claim_sink(size_t i);

    const Blobs& blobs() const { return blobs_; }
    void finish();  // unknown-argument and output-count checks

private:
    const mil::Arg* lookup(const char* key);
    Value literal_value(const mil::Literal& lit);
    const Value& resolve(const mil::Arg& a, const char* key, bool in_place = false);
    void check_declared(size_t i, DType dtype, const Shape& shape);

    const mil::Op& op_;
    std::unordered_map<std::string, Value>& values_;
    std::vector<PlanStep>& steps_;
    const Blobs& blobs_;
    bool round16_;
    Arena& buffers_;
    const std::unordered_map<std::string, Sink*>& sinks_;
    Inputs& inputs_;
    std::vector<std::string> used_;
    std::vector<bool> defined_;
    std::vector<std::unique_ptr<Value>> temps_;  // literal operands
};

// Load a literal (inline numbers or a BLOBFILE) into a new constant value.
Value load_literal(const mil::Literal& lit, int line, const Blobs& blobs, bool round16,
                   Arena& buffers);
void* allocate(Arena& buffers, DType dtype, int64_t numel, int line);
int64_t bounded_numel(const Shape& shape);  // -1 above the per-tensor limit

using BuildFn = void (*)(Builder&);
const std::map<std::string, BuildFn>& registry();

// Op families (ops/*.cpp) add their ops here.
void register_const_ops(std::map<std::string, BuildFn>& r);
void register_conv_ops(std::map<std::string, BuildFn>& r);
void register_matmul_ops(std::map<std::string, BuildFn>& r);
void register_elementwise_ops(std::map<std::string, BuildFn>& r);
void register_reduce_ops(std::map<std::string, BuildFn>& r);
void register_softmax_ops(std::map<std::string, BuildFn>& r);
void register_shape_ops(std::map<std::string, BuildFn>& r);
void register_quant_ops(std::map<std::string, BuildFn>& r);

// Shared numeric helpers.
int64_t normalize_axis(Builder& b, int64_t axis, size_t rank, const char* what);
bool broadcast_shapes(const Shape& a, const Shape& b, Shape* out);
Shape broadcast_strides(const View& v, const Shape& out_shape);  // 0 stride on broadcast dims
// Run fn(begin, end) over rows in parallel when the total work is large.
void parallel_rows(int64_t rows, int64_t row_len, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace anetrain::backend::ref

namespace anetrain::backend::ref {

// Dimensions merged and size-1 dimensions dropped for a set of operands sharing one iteration
// space: the last dimension is the inner (row) loop, the rest are rows.
struct Loop {
    Shape shape;                 // at least one dimension
    std::vector<Shape> strides;  // per operand, same length as shape
    int64_t inner() const { return shape.back(); }
    int64_t rows() const;
};
Loop make_loop(const Shape& shape, const std::vector<Shape>& strides);

// Calls f(offsets, n) for each piece of one row within elements [b, e) of the loop (in row-major
// order); offsets[k] is operand k's element offset of the piece's first element. Pieces are
// whole rows except where b or e cut a row.
template <size_t K, class F>
void for_range(const Loop& L, int64_t b, int64_t e, F&& f);

// Calls f(row_offsets) for rows [r0, r1) of the loop; row_offsets[k] is operand k's element
// offset of the row start.
template <size_t K, class F>
void for_rows(const Loop& L, int64_t r0, int64_t r1, F&& f) {
    const size_t nd = L.shape.size() - 1;
    int64_t idx[16] = {0};
    int64_t off[K] = {0};
    int64_t r = r0;
    for (size_t d = nd; d-- > 0;) {
        idx[d] = r % L.shape[d];
        r /= L.shape[d];
        for (size_t k = 0; k < K; ++k) off[k] += idx[d] * L.strides[k][d];
    }
    for (int64_t row = r0; row < r1; ++row) {
        f(off);
        for (size_t d = nd; d-- > 0;) {
            for (size_t k = 0; k < K; ++k) off[k] += L.strides[k][d];
            if (++idx[d] < L.shape[d]) break;
            for (size_t k = 0; k < K; ++k) off[k] -= idx[d] * L.strides[k][d];
            idx[d] = 0;
        }
    }
}

template <size_t K, class F>
void for_range(const Loop& L, int64_t b, int64_t e, F&& f) {
    const int64_t n = L.inner();
    if (e <= b || n == 0) return;
    int64_t row = b / n;
    for_rows<K>(L, row, (e + n - 1) / n, [&](const int64_t* off) {
        const int64_t lo = std::max<int64_t>(b - row * n, 0), hi = std::min<int64_t>(e - row * n, n);
        int64_t piece[K];
        for (size_t k = 0; k < K; ++k) piece[k] = off[k] + lo * L.strides[k].back();
        f(static_cast<const int64_t*>(piece), hi - lo);
        ++row;
    });
}

}  // namespace anetrain::backend::ref
