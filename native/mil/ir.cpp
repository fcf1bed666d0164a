// Small helpers of the parsed MIL form: dtypes, types, errors, lookups.
#include "mil/ir.h"

namespace anetrain::mil {

namespace {
struct DTypeInfo {
    DType dtype;
    const char* name;
    size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::fp16, "fp16", 2},   {DType::fp32, "fp32", 4},     {DType::int32, "int32", 4},
    {DType::int16, "int16", 2}, {DType::int8, "int8", 1},     {DType::uint16, "uint16", 2},
    {DType::uint8, "uint8", 1}, {DType::uint64, "uint64", 8}, {DType::bool_, "bool", 1},
    {DType::string, "string", 0},
};
}  // namespace

const char* dtype_name(DType d) {
    for (const auto& i : kDTypes)
        if (i.dtype == d) return i.name;
    return "?";
}

bool dtype_from_name(std::string_view s, DType* out) {
    for (const auto& i : kDTypes)
        if (s == i.name) {
            *out = i.dtype;
            return true;
        }
    return false;
}

size_t dtype_size(DType d) {
    for (const auto& i : kDTypes)
        if (i.dtype == d) return i.size;
    return 0;
}

bool is_float(DType d) { return d == DType::fp16 || d == DType::fp32; }

int64_t Type::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::string Type::str() const {
    if (!tensor) return dtype_name(dtype);
    std::string s = "tensor<";
    s += dtype_name(dtype);
    s += ", [";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    s += "]>";
    return s;
}

static std::string with_line(int line, const std::string& msg) {
    return line > 0 ? "MIL line " + std::to_string(line) + ": " + msg : "MIL: " + msg;
}

MilError::MilError(int line, const std::string& msg) : std::runtime_error(with_line(line, msg)), line_(line), problem_(msg) {}

static const Arg* find_named(const NamedArgs& list, std::string_view key) {
    for (const auto& kv : list)
        if (kv.first == key) return &kv.second;
    return nullptr;
}

const Arg* Op::arg(std::string_view key) const { return find_named(args, key); }
const Arg* Op::attr(std::string_view key) const { return find_named(attrs, key); }
const Arg* Op::operand(std::string_view key) const {
    const Arg* a = arg(key);
    return a ? a : attr(key);
}

bool uses_verbose_scalars(const Function& f) {
    for (const Op& op : f.ops)
        for (const auto& [key, arg] : op.attrs)
            if (key == "name" && arg.kind == Arg::Kind::Literal) return arg.literal.type.tensor;
    return false;
}

const Function& Program::main() const {
    for (const auto& f : functions)
        if (f.name == "main") return f;
    throw MilError(0, "the program has no function named 'main'; name the entry function main");
}

std::string build_info_text(const std::vector<std::pair<std::string, std::string>>& info, bool verbose) {
    auto q = [](const std::string& v) {
        std::string out = "\"";
        for (char c : v) {
            if (c == '"' || c == '\\') out += '\\';
            out += c;
        }
        return out + "\"";
    };
    std::string s = verbose ? "[buildInfo = dict<tensor<string, []>, tensor<string, []>>({" : "[buildInfo = dict<string, string>({";
    for (size_t i = 0; i < info.size(); ++i) s += (i ? ", " : "") + std::string("{") + q(info[i].first) + ", " + q(info[i].second) + "}";
    return s + "})]";
}

std::vector<std::pair<std::string, std::string>> standard_build_info(bool verbose) {
    if (verbose) return {{"coremlc-version", "3505.4.1"}};
    return {{"coremlc-component-MIL", "3510.2.1"},
            {"coremlc-version", "3505.4.1"},
            {"coremltools-component-milinternal", ""},
            {"coremltools-version", "9.0"}};
}

}  // namespace anetrain::mil
