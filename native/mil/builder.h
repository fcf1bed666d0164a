// MIL text builder: what kernel generators use to write programs in the form the ANE compiler
// accepts. The generator states every output's type; the backend checks it (the ref backend
// rejects a declared type that differs from what the op produces), so each shape is written
// once and verified once.
//
//   mil::Builder b(dialect);
//   auto x = b.input("x", {DType::fp16, true, {1, 768, 1, 256}});
//   auto W = b.weight("W", {DType::fp16, true, {2048, 768, 1, 1}}, "@model_path/weights/w.bin", 64);
//   auto y = b.op("y", {DType::fp16, true, {1, 2048, 1, 256}}, "conv",
//                 {{"x", x}, {"weight", W}, {"strides", ints({1, 1})}, ...});
//   b.output(y);
//   std::string text = b.text();
//
// Non-variable operands (ints, a float, a bool, a string) become named const statements,
// declared once per distinct value, as the ANE compiler expects.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mil/ir.h"

namespace anetrain::mil {

// Which program version, opset target and scalar spelling to emit.
struct Dialect {
    std::string version = "1.3";
    std::string opset = "ios18";
    bool verbose_scalars = false;  // tensor<string, []>("x") instead of string("x") (older chips)

    // "1.3/ios18", "1.5/ios17", "1.0/ios16-verbose" (the suffix selects verbose scalars).
    static Dialect from_string(const std::string& s);
    std::string str() const;
};

// The dialect function `f` of a program of this version is written in: the version, f's opset
// and f's scalar spelling.
Dialect dialect_of(const std::string& version, const Function& f);
// `p` in another dialect: program version, opsets, buildInfo and the spelling of every scalar
// (mil::print then writes it as the Builder would have).
void respell(Program& p, const Dialect& d);

// An operand: a variable (by name) or a constant value to be declared as a const statement.
struct Operand {
    std::string var;  // non-empty: a variable reference
    Literal value;    // otherwise: the constant
    Operand(const std::string& name) : var(name) {}  // NOLINT: implicit on purpose
    Operand(const char* name) : var(name) {}         // NOLINT
    explicit Operand(Literal v) : value(std::move(v)) {}
};

Operand ints(const std::vector<int64_t>& v);  // tensor<int32, [n]>
Operand int32(int64_t v);                     // int32 scalar
Operand fp16(double v);                       // fp16 scalar
Operand fp32(double v);                       // fp32 scalar
Operand boolean(bool v);
Operand str(const std::string& v);
// A list of variables, e.g. concat's values=(a, b, c).
struct Tuple {
    std::vector<std::string> vars;
};

using Args = std::vector<std::pair<std::string, Operand>>;

class Builder {
public:
    explicit Builder(Dialect d = Dialect{}, std::string function = "main");

    std::string input(const std::string& name, const Type& t);
    // A BLOBFILE constant: record_offset is the BLOBFILE offset (64 for a file's first blob).
    std::string weight(const std::string& name, const Type& t, const std::string& blob_path, uint64_t record_offset);
    // An inline tensor constant (small tables, masks): values row-major.
    std::string constant(const std::string& name, const Type& t, const std::vector<double>& values);
    // One statement with one output.
    std::string op(const std::string& out, const Type& t, const std::string& op_type, const Args& args);
    // concat-style ops that take a tuple argument plus plain operands.
    std::string op(const std::string& out, const Type& t, const std::string& op_type, const Args& args,
                   const std::string& tuple_key, const Tuple& tuple);
    void output(const std::string& name);
    std::string text() const;

    const Dialect& dialect() const { return dialect_; }

private:
    std::string declare_const(const std::string& hint, const Literal& v);
    void const_statement(const std::string& name, const Literal& v);  // checks the name, appends the line
    std::string operand(const std::string& hint, const Operand& o);
    void check_name(const std::string& name);

    Dialect dialect_;
    std::string function_;
    std::vector<Param> inputs_;
    std::vector<std::string> outputs_;
    std::vector<std::string> body_;
    std::vector<std::pair<std::string, std::string>> consts_;  // literal text -> declared name
    std::vector<std::string> names_;
};

// Literal spelling in a dialect (exposed for tests and the printer).
std::string literal_text(const Literal& v, bool verbose_scalars);
std::string type_text(const Type& t, bool verbose_scalars);

}  // namespace anetrain::mil
