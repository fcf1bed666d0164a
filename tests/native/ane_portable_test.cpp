// Checks of the ANE backend's portable C++ that need C++ to drive them: the compile-with-
// fallback rule against fake backends that throw, and the MIL input-packing rewrite on
// hand-built IR. Built and run by tests/test_ane.py; prints one line per failed check and
// exits non-zero when any check fails.
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/ane/packing.h"
#include "backend/ane/policy.h"

using namespace anetrain;
using namespace anetrain::backend;
using namespace anetrain::backend::ane;

static int failures = 0;
#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            std::printf("FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
            ++failures;                                                     \
        }                                                                   \
    } while (0)

class FakeKernel : public Kernel {
public:
    explicit FakeKernel(std::string backend) { backend_name_ = std::move(backend); }
    void eval(const std::vector<HostTensor>&, const std::vector<HostTensor>&) override {}
};

static CompileFn kernel_from(const std::string& backend, int* calls) {
    return [backend, calls] {
        ++*calls;
        return std::unique_ptr<Kernel>(new FakeKernel(backend));
    };
}

template <class E>
static CompileFn failing_with(const std::string& message, int* calls) {
    return [message, calls]() -> std::unique_ptr<Kernel> {
        ++*calls;
        throw E(message);
    };
}

template <class E>
static bool throws(const std::function<void()>& f) {
    try {
        f();
    } catch (const E&) {
        return true;
    } catch (...) {
    }
    return false;
}

static void test_fallback() {
    std::vector<std::string> warnings;
    WarnFn warn = [&](const std::string& w) { warnings.push_back(w); };
    int ane = 0, ref = 0;

    auto k = compile_with_fallback("ok", kernel_from("ane", &ane), kernel_from("ref", &ref), false, warn);
    CHECK(k->backend_name() == "ane" && ane == 1 && ref == 0 && warnings.empty());

    k = compile_with_fallback("attn_fwd", failing_with<BackendError>("ANE compile failed: bad op", &ane),
                              kernel_from("ref", &ref), false, warn);
    CHECK(k->backend_name() == "ref" && ref == 1);
    CHECK(warnings.size() == 1);
    CHECK(warnings.size() == 1 && warnings[0].find("'attn_fwd'") != std::string::npos &&
          warnings[0].find("ANE compile failed: bad op") != std::string::npos);

    // The same kernel failing again (static pipeline recompiles) does not warn again.
    k = compile_with_fallback("attn_fwd", failing_with<BackendError>("ANE compile failed: bad op", &ane),
                              kernel_from("ref", &ref), false, warn);
    CHECK(k->backend_name() == "ref" && ref == 2 && warnings.size() == 1);

    // Strict: the compiler's error propagates and ref is never tried.
    CHECK(throws<BackendError>([&] {
        compile_with_fallback("ffn", failing_with<BackendError>("nope", &ane), kernel_from("ref", &ref), true, warn);
    }));
    CHECK(ref == 2 && warnings.size() == 1);

    // A spent budget is not a per-kernel failure: it propagates even when not strict.
    CHECK(throws<CompileBudgetExceeded>([&] {
        compile_with_fallback("ffn", failing_with<CompileBudgetExceeded>("budget", &ane), kernel_from("ref", &ref),
                              false, warn);
    }));
    // Program errors (MilError is not a BackendError) propagate too.
    CHECK(throws<std::invalid_argument>([&] {
        compile_with_fallback("ffn", failing_with<std::invalid_argument>("MIL line 3: bad", &ane),
                              kernel_from("ref", &ref), false, warn);
    }));
    CHECK(ref == 2 && warnings.size() == 1);
}

static mil::Type tensor(mil::DType d, std::vector<int64_t> shape) { return mil::Type{d, true, std::move(shape)}; }

static mil::Arg name_literal(const std::string& v, bool verbose) {
    mil::Arg a;
    a.kind = mil::Arg::Kind::Literal;
    a.literal.type = mil::Type{mil::DType::string, verbose, {}};
    a.literal.strings = {v};
    return a;
}

static mil::Arg ref_to(const std::string& v) {
    mil::Arg a;
    a.kind = mil::Arg::Kind::Ref;
    a.ref = v;
    return a;
}

// y = add(x, w) with x [1,4,1,8] and w [1,2,1,8]... shapes only matter to the rewrite.
static mil::Function two_input_function(bool verbose) {
    mil::Function f;
    f.name = "main";
    f.opset = "ios18";
    f.line = 3;
    f.inputs = {{"x", tensor(mil::DType::fp16, {1, 4, 1, 8}), 3}, {"w", tensor(mil::DType::fp16, {1, 2, 1, 8}), 3}};
    mil::Op op;
    op.line = 4;
    op.type = "concat";
    op.outputs = {"y"};
    op.output_types = {tensor(mil::DType::fp16, {1, 6, 1, 8})};
    op.args = {{"x", ref_to("x")}, {"y", ref_to("w")}};
    op.attrs = {{"name", name_literal("y", verbose)}};
    f.ops = {op};
    f.outputs = {"y"};
    return f;
}

static const mil::Arg* find(const mil::NamedArgs& args, const std::string& key) {
    for (const auto& [k, v] : args)
        if (k == key) return &v;
    return nullptr;
}

static std::vector<double> const_value(const mil::Function& f, const std::string& name) {
    for (const mil::Op& op : f.ops)
        if (op.type == "const" && op.outputs[0] == name) return find(op.attrs, "val")->literal.numbers;
    return {};
}

static void test_packing() {
    for (bool verbose : {false, true}) {
        mil::Function f = two_input_function(verbose);
        CHECK(packing_problem(f.inputs).empty());
        std::string packed = pack_inputs(f);
        CHECK(f.inputs.size() == 1 && f.inputs[0].name == packed);
        CHECK(f.inputs[0].type == tensor(mil::DType::fp16, {1, 6, 1, 8}));
        CHECK(f.ops.size() == 7);
        if (f.ops.size() != 7) continue;
        // Each original input is sliced back out under its own name, at its channel offset.
        const char* names[] = {"x", "w"};
        const std::vector<double> begins[] = {{0, 0, 0, 0}, {0, 4, 0, 0}};
        const std::vector<double> sizes[] = {{1, 4, 1, 8}, {1, 2, 1, 8}};
        for (int i = 0; i < 2; ++i) {
            const mil::Op& slice = f.ops[size_t(3 * i + 2)];
            CHECK(slice.type == "slice_by_size" && slice.outputs[0] == names[i]);
            CHECK(find(slice.args, "x")->ref == packed);
            CHECK(const_value(f, find(slice.args, "begin")->ref) == begins[i]);
            CHECK(const_value(f, find(slice.args, "size")->ref) == sizes[i]);
            CHECK(find(slice.attrs, "name")->literal.type.tensor == verbose);
        }
        CHECK(f.ops[6].type == "concat" && f.ops[6].outputs[0] == "y");
    }

    mil::Function narrow = two_input_function(false);
    narrow.inputs[1].type.shape = {1, 2, 1, 16};
    CHECK(packing_problem(narrow.inputs).find("width 16") != std::string::npos);
    CHECK(throws<std::invalid_argument>([&] { pack_inputs(narrow); }));

    mil::Function rank3 = two_input_function(false);
    rank3.inputs[0].type.shape = {1, 4, 8};
    CHECK(packing_problem(rank3.inputs).find("not [1, C, 1, S]") != std::string::npos);

    mil::Function mixed = two_input_function(false);
    mixed.inputs[1].type.dtype = mil::DType::fp32;
    CHECK(packing_problem(mixed.inputs).find("dtype") != std::string::npos);

    // Generated names never collide with the program's own.
    mil::Function clash = two_input_function(false);
    clash.ops[0].outputs = {"anetrain_packed_input"};
    clash.outputs = {"anetrain_packed_input"};
    CHECK(pack_inputs(clash) != "anetrain_packed_input");
}

int main() {
    test_fallback();
    test_packing();
    if (failures) return 1;
    std::printf("all checks passed\n");
    return 0;
}
