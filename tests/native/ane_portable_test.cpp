// Checks of the ANE backend's portable C++ that need C++ to drive them: the fallback backend
// against fake backends that throw, and the MIL input-packing rewrite on
// hand-built IR. Built and run by tests/test_ane.py; prints one line per failed check and
// exits non-zero when any check fails.
#include <cstdio>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/ane/packing.h"
#include "backend/fallback.h"

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

// A backend whose compiles either succeed with a FakeKernel or throw E(message).
template <class E>
class FakeBackend : public Backend {
public:
    FakeBackend(std::string name, std::string failure) : Backend(-1), name_(std::move(name)), failure_(std::move(failure)) {}
    std::string name() const override { return name_; }
    bool supports(const std::string&) const override { return failure_.empty(); }
    int calls = 0;

protected:
    std::unique_ptr<Kernel> compile_program(const mil::Program&, const std::string&, const Blobs&,
                                            const std::string&) override {
        ++calls;
        if (!failure_.empty()) throw E(failure_);
        return std::unique_ptr<Kernel>(new FakeKernel(name_));
    }

private:
    std::string name_, failure_;
};

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

static const char* kProgram =
    "program(1.3)\n{\n    func main<ios18>(tensor<fp16, [1, 64, 1, 32]> x) {\n"
    "        tensor<fp16, [1, 64, 1, 32]> y = add(x = x, y = x)[name = string(\"y\")];\n    } -> (y);\n}\n";

static void test_fallback() {
    auto ref = std::make_shared<FakeBackend<BackendError>>("ref", "");
    {  // the primary compiles: no note, no fallback
        auto ane = std::make_shared<FakeBackend<BackendError>>("ane", "");
        FallbackBackend fb(ane, ref, false);
        auto k = fb.compile(kProgram, {}, "ok");
        CHECK(k->backend_name() == "ane" && k->placement_note().empty() && fb.fallbacks().empty());
        CHECK(fb.name() == "ane" && ref->calls == 0);
    }
    {  // the primary's compiler fails: the secondary compiles, and the kernel and the list say why
        auto ane = std::make_shared<FakeBackend<BackendError>>("ane", "ANE compile failed: bad op");
        FallbackBackend fb(ane, ref, false);
        auto k = fb.compile(kProgram, {}, "attn_fwd");
        CHECK(k->backend_name() == "ref" && ref->calls == 1);
        CHECK(k->placement_note() == "ane: ANE compile failed: bad op");
        CHECK(fb.fallbacks().size() == 1 && fb.fallbacks()[0].label == "attn_fwd");
        // strict: the primary's error propagates and the secondary is never tried
        FallbackBackend strict(ane, ref, true);
        CHECK(throws<BackendError>([&] { strict.compile(kProgram, {}, "ffn"); }));
        CHECK(ref->calls == 1);
    }
    {  // a spent budget is not a per-kernel failure: it propagates even when not strict
        auto ane = std::make_shared<FakeBackend<CompileBudgetExceeded>>("ane", "budget");
        FallbackBackend fb(ane, ref, false);
        CHECK(throws<CompileBudgetExceeded>([&] { fb.compile(kProgram, {}, "ffn"); }));
        CHECK(ref->calls == 1);
    }
    {  // a program that does not parse never reaches either backend
        auto ane = std::make_shared<FakeBackend<BackendError>>("ane", "");
        FallbackBackend fb(ane, ref, false);
        CHECK(throws<mil::MilError>([&] { fb.compile("program(1.3)\n{ nonsense", {}, "bad"); }));
        CHECK(ane->calls == 0 && ref->calls == 1);
    }
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
