#include "mil/builder.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <functional>
#include <stdexcept>

#include "core/fp16.h"

namespace anetrain::mil {
namespace {

// The buildInfo the ANE compiler has been seen to accept with program(1.3) and later.
std::string number_text(DType d, double v) {
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
    char buf[96];  // fixed fp32 needs at most 39 integer digits or 45 decimal places plus sign and point
    std::to_chars_result r;
    if (d == DType::fp16) {  // the value the program will hold
        r = std::to_chars(buf, buf + sizeof buf, fp16::to_float(fp16::from_float(float(v))), std::chars_format::fixed);
    } else if (d == DType::fp32) {
        r = std::to_chars(buf, buf + sizeof buf, float(v), std::chars_format::fixed);
    } else if (d == DType::bool_) {
        return v != 0 ? "true" : "false";
    } else {
        r = std::to_chars(buf, buf + sizeof buf, int64_t(v));
    }
    return std::string(buf, r.ptr);
}

std::string quoted(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

std::string string_literal(const std::string& s, bool verbose) {
    return (verbose ? "tensor<string, []>(" : "string(") + quoted(s) + ")";
}

}  // namespace

Dialect Dialect::from_string(const std::string& s) {
    Dialect d;
    const auto slash = s.find('/');
    if (slash == std::string::npos || slash == 0 || slash + 1 >= s.size())
        throw std::invalid_argument("MIL dialect '" + s + "' is not of the form VERSION/OPSET, e.g. 1.3/ios18");
    d.version = s.substr(0, slash);
    d.opset = s.substr(slash + 1);
    const std::string suffix = "-verbose";
    if (d.opset.size() > suffix.size() && d.opset.compare(d.opset.size() - suffix.size(), suffix.size(), suffix) == 0) {
        d.opset.resize(d.opset.size() - suffix.size());
        d.verbose_scalars = true;
    }
    for (char c : d.version)
        if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.'))
            throw std::invalid_argument("MIL dialect '" + s + "': program version must look like 1.3");
    if (d.opset.rfind("ios", 0) != 0)
        throw std::invalid_argument("MIL dialect '" + s + "': opset must look like ios18");
    return d;
}

std::string Dialect::str() const { return version + "/" + opset + (verbose_scalars ? "-verbose" : ""); }

Dialect dialect_of(const std::string& version, const Function& f) {
    Dialect d;
    d.version = version;
    d.opset = f.opset;
    d.verbose_scalars = uses_verbose_scalars(f);
    return d;
}

void respell(Program& p, const Dialect& d) {
    const bool v = d.verbose_scalars;
    p.version = d.version;
    p.build_info = standard_build_info(v);
    auto scalar = [v](Type& t) {
        if (t.shape.empty()) t.tensor = v;
    };
    std::function<void(Arg&)> arg = [&](Arg& a) {
        if (a.kind == Arg::Kind::Literal) scalar(a.literal.type);
        for (Arg& item : a.items) arg(item);
    };
    for (Function& f : p.functions) {
        f.opset = d.opset;
        for (Param& in : f.inputs) scalar(in.type);
        for (Op& op : f.ops) {
            for (Type& t : op.output_types) scalar(t);
            for (auto& [k, a] : op.args) arg(a);
            for (auto& [k, a] : op.attrs) arg(a);
        }
    }
}

Operand ints(const std::vector<int64_t>& v) {
    Literal l;
    l.type = Type{DType::int32, true, {int64_t(v.size())}};
    l.numbers.assign(v.begin(), v.end());
    return Operand(l);
}
namespace {
Operand scalar(DType d, double v) {
    Literal l;
    l.type = Type{d, false, {}};
    l.numbers = {v};
    return Operand(l);
}
}  // namespace
Operand int32(int64_t v) { return scalar(DType::int32, double(v)); }
Operand fp16(double v) { return scalar(DType::fp16, v); }
Operand fp32(double v) { return scalar(DType::fp32, v); }
Operand boolean(bool v) { return scalar(DType::bool_, v ? 1 : 0); }
Operand str(const std::string& v) {
    Literal l;
    l.type = Type{DType::string, false, {}};
    l.strings = {v};
    return Operand(l);
}

std::string type_text(const Type& t, bool verbose) {
    if (!t.tensor && !verbose) return dtype_name(t.dtype);
    std::string s = std::string("tensor<") + dtype_name(t.dtype) + ", [";
    for (size_t i = 0; i < t.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
    return s + "]>";
}

std::string literal_text(const Literal& v, bool verbose) {
    const std::string ty = type_text(v.type, verbose);
    if (v.is_blob) {
        return ty + "(BLOBFILE(path = " + string_literal(v.blob_path, verbose) + ", offset = " +
               (verbose ? "tensor<uint64, []>(" : "uint64(") + std::to_string(v.blob_offset) + ")))";
    }
    std::string body;
    if (v.type.dtype == DType::string) {
        for (size_t i = 0; i < v.strings.size(); ++i) body += (i ? ", " : "") + quoted(v.strings[i]);
    } else {
        for (size_t i = 0; i < v.numbers.size(); ++i) body += (i ? ", " : "") + number_text(v.type.dtype, v.numbers[i]);
    }
    if (v.type.tensor && !v.type.shape.empty()) body = "[" + body + "]";
    return ty + "(" + body + ")";
}

Builder::Builder(Dialect d, std::string function) : dialect_(std::move(d)), function_(std::move(function)) {}

void Builder::check_name(const std::string& name) {
    if (name.empty()) throw std::invalid_argument("MIL builder: empty variable name");
    for (char c : name)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_'))
            throw std::invalid_argument("MIL builder: variable name '" + name + "' may hold only letters, digits and _");
    if (std::isdigit(static_cast<unsigned char>(name[0])))
        throw std::invalid_argument("MIL builder: variable name '" + name + "' starts with a digit");
    for (const auto& n : names_)
        if (n == name) throw std::invalid_argument("MIL builder: variable '" + name + "' defined twice");
    names_.push_back(name);
}

std::string Builder::input(const std::string& name, const Type& t) {
    check_name(name);
    inputs_.push_back(Param{name, t, 0});
    return name;
}

std::string Builder::declare_const(const std::string& hint, const Literal& v) {
    const std::string text = literal_text(v, dialect_.verbose_scalars);
    for (const auto& [t, n] : consts_)
        if (t == text) return n;
    // Flags and small integers are shared by many statements: name them by value.
    std::string name = hint;
    if (v.type.dtype == DType::bool_ && !v.type.tensor) name = v.numbers[0] != 0 ? "c_true" : "c_false";
    if (v.type.dtype == DType::int32 && !v.type.tensor) {
        const auto n = int64_t(v.numbers[0]);
        name = "c_int" + (n < 0 ? "_m" + std::to_string(-n) : "_" + std::to_string(n));
    }
    for (int i = 1; std::find(names_.begin(), names_.end(), name) != names_.end(); ++i) name = hint + "_" + std::to_string(i);
    const_statement(name, v);
    consts_.emplace_back(text, name);
    return name;
}

void Builder::const_statement(const std::string& name, const Literal& v) {
    check_name(name);
    body_.push_back(type_text(v.type, dialect_.verbose_scalars) + " " + name + " = const()[name = " +
                    string_literal(name, dialect_.verbose_scalars) + ", val = " +
                    literal_text(v, dialect_.verbose_scalars) + "];");
}

std::string Builder::weight(const std::string& name, const Type& t, const std::string& path, uint64_t offset) {
    Literal l;
    l.type = t;
    l.is_blob = true;
    l.blob_path = path;
    l.blob_offset = offset;
    const_statement(name, l);
    return name;
}

std::string Builder::constant(const std::string& name, const Type& t, const std::vector<double>& values) {
    if (int64_t(values.size()) != t.numel())
        throw std::invalid_argument("MIL builder: constant '" + name + "' has " + std::to_string(values.size()) +
                                    " values for " + std::to_string(t.numel()) + " elements");
    Literal l;
    l.type = t;
    l.numbers = values;
    const_statement(name, l);
    return name;
}

std::string Builder::operand(const std::string& hint, const Operand& o) {
    if (!o.var.empty()) {
        if (std::find(names_.begin(), names_.end(), o.var) == names_.end())
            throw std::invalid_argument("MIL builder: operand '" + o.var + "' is not defined yet");
        return o.var;
    }
    return declare_const(hint, o.value);
}

std::string Builder::op(const std::string& out, const Type& t, const std::string& op_type, const Args& args) {
    return op(out, t, op_type, args, "", Tuple{});
}

std::string Builder::op(const std::string& out, const Type& t, const std::string& op_type, const Args& args,
                        const std::string& tuple_key, const Tuple& tuple) {
    std::string call;
    for (const auto& [key, o] : args) {
        call += (call.empty() ? "" : ", ") + key + " = " + operand(out + "_" + key, o);
    }
    if (!tuple_key.empty()) {
        std::string items;
        for (const auto& v : tuple.vars) items += (items.empty() ? "" : ", ") + operand(out, Operand(v));
        call += (call.empty() ? "" : ", ") + tuple_key + " = (" + items + ")";
    }
    check_name(out);
    body_.push_back(type_text(t, dialect_.verbose_scalars) + " " + out + " = " + op_type + "(" + call + ")[name = " +
                    string_literal(out, dialect_.verbose_scalars) + "];");
    return out;
}

void Builder::output(const std::string& name) {
    if (std::find(names_.begin(), names_.end(), name) == names_.end())
        throw std::invalid_argument("MIL builder: output '" + name + "' is not defined");
    outputs_.push_back(name);
}

std::string Builder::text() const {
    if (outputs_.empty()) throw std::invalid_argument("MIL builder: the program has no outputs");
    std::string s = "program(" + dialect_.version + ")\n" +
                    build_info_text(standard_build_info(dialect_.verbose_scalars), dialect_.verbose_scalars) +
                    "\n{\n    func " + function_ + "<" + dialect_.opset + ">(";
    for (size_t i = 0; i < inputs_.size(); ++i)
        s += (i ? ", " : "") + type_text(inputs_[i].type, dialect_.verbose_scalars) + " " + inputs_[i].name;
    s += ") {\n";
    for (const auto& line : body_) s += "        " + line + "\n";
    s += "    } -> (";
    for (size_t i = 0; i < outputs_.size(); ++i) s += (i ? ", " : "") + outputs_[i];
    return s + ");\n}\n";
}

}  // namespace anetrain::mil
