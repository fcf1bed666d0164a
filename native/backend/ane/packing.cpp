#include "backend/ane/packing.h"

#include <set>
#include <stdexcept>

namespace anetrain::backend::ane {

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

std::string unique_name(const std::set<std::string>& taken, const std::string& base) {
    std::string name = base;
    while (taken.count(name)) name += "_";
    return name;
}

mil::Arg string_literal(const std::string& value, bool verbose) {
    mil::Arg a;
    a.kind = mil::Arg::Kind::Literal;
    a.literal.type.dtype = mil::DType::string;
    a.literal.type.tensor = verbose;
    a.literal.strings = {value};
    return a;
}

mil::Arg int4_literal(const std::vector<int64_t>& v) {
    mil::Arg a;
    a.kind = mil::Arg::Kind::Literal;
    a.literal.type.dtype = mil::DType::int32;
    a.literal.type.tensor = true;
    a.literal.type.shape = {4};
    for (int64_t x : v) a.literal.numbers.push_back(double(x));
    return a;
}

mil::Arg ref_arg(const std::string& name) {
    mil::Arg a;
    a.kind = mil::Arg::Kind::Ref;
    a.ref = name;
    return a;
}

mil::Op int4_const(const std::string& name, const std::vector<int64_t>& v, bool verbose, int line) {
    mil::Op op;
    op.line = line;
    op.type = "const";
    op.outputs = {name};
    op.output_types = {mil::Type{mil::DType::int32, true, {4}}};
    op.attrs = {{"name", string_literal(name, verbose)}, {"val", int4_literal(v)}};
    return op;
}

}  // namespace

bool is_channel_major(const mil::Type& t) {
    return t.tensor && t.shape.size() == 4 && t.shape[0] == 1 && t.shape[2] == 1 && t.shape[1] > 0 && t.shape[3] > 0;
}

std::string packing_problem(const std::vector<mil::Param>& params) {
    if (params.empty()) return "the program has no inputs to pack";
    const mil::Type& first = params.front().type;
    for (const mil::Param& p : params) {
        if (!is_channel_major(p.type))
            return "input '" + p.name + "' is " + shape_text(p.type.shape) + ", not [1, C, 1, S]";
        if (p.type.dtype != first.dtype) return "input '" + p.name + "' has a different dtype from the first input";
        if (p.type.shape[3] != first.shape[3])
            return "input '" + p.name + "' has width " + std::to_string(p.type.shape[3]) + ", the first input " +
                   std::to_string(first.shape[3]);
    }
    return "";
}

std::string pack_inputs(mil::Function& f) {
    std::string problem = packing_problem(f.inputs);
    if (!problem.empty()) throw std::invalid_argument("cannot pack the inputs into one surface: " + problem);

    std::set<std::string> taken;
    for (const mil::Param& p : f.inputs) taken.insert(p.name);
    for (const mil::Op& op : f.ops) taken.insert(op.outputs.begin(), op.outputs.end());

    const bool verbose = mil::uses_verbose_scalars(f);
    const int64_t width = f.inputs.front().type.shape[3];
    int64_t channels = 0;
    for (const mil::Param& p : f.inputs) channels += p.type.shape[1];

    mil::Param packed;
    packed.name = unique_name(taken, "anetrain_packed_input");
    packed.type = mil::Type{f.inputs.front().type.dtype, true, {1, channels, 1, width}};
    packed.line = f.line;
    taken.insert(packed.name);

    std::vector<mil::Op> prologue;
    int64_t at = 0;
    for (const mil::Param& p : f.inputs) {
        std::string begin = unique_name(taken, p.name + "_pack_begin");
        taken.insert(begin);
        std::string size = unique_name(taken, p.name + "_pack_size");
        taken.insert(size);
        prologue.push_back(int4_const(begin, {0, at, 0, 0}, verbose, f.line));
        prologue.push_back(int4_const(size, p.type.shape, verbose, f.line));
        mil::Op slice;
        slice.line = f.line;
        slice.type = "slice_by_size";
        slice.outputs = {p.name};
        slice.output_types = {p.type};
        slice.args = {{"x", ref_arg(packed.name)}, {"begin", ref_arg(begin)}, {"size", ref_arg(size)}};
        slice.attrs = {{"name", string_literal(p.name, verbose)}};
        prologue.push_back(std::move(slice));
        at += p.type.shape[1];
    }
    f.ops.insert(f.ops.begin(), prologue.begin(), prologue.end());
    f.inputs = {packed};
    return packed.name;
}

std::string packed_program_text(const mil::Program& program) {
    mil::Program rewritten = program;
    for (mil::Function& f : rewritten.functions)
        if (f.name == "main") {
            pack_inputs(f);
            return mil::print(rewritten);
        }
    throw std::invalid_argument("the program has no main function");
}

}  // namespace anetrain::backend::ane
