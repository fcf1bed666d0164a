// The parsed form of a MIL program: the contract between the parser (mil/parse.cpp), the MIL
// builder (mil/builder.cpp) and every backend. Pure data, no execution semantics.
//
// Text form (see shared reference ane-facts.md section 2):
//   program(1.3)
//   [buildInfo = dict<string, string>({{"k", "v"}, ...})]
//   {
//     func main<ios18>(tensor<fp16, [1, 768, 1, 256]> x, ...) {
//       tensor<fp16, [1, 768, 1, 256]> y = mul(x = x, y = s)[name = string("y")];
//       ...
//     } -> (y, ...);
//   }
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace anetrain::mil {

enum class DType : uint8_t { fp16, fp32, int32, int16, int8, uint16, uint8, uint64, bool_, string };

const char* dtype_name(DType d);                  // "fp16", "bool", "string", ...
bool dtype_from_name(std::string_view s, DType* out);
size_t dtype_size(DType d);                       // bytes per element (string: 0)
bool is_float(DType d);                           // fp16, fp32

// A value type. Scalars are written `fp16`, `int32`, `string`...; tensors `tensor<fp16, [1, 2]>`.
// `tensor<string, []>` (rank 0, the verbose scalar spelling) has tensor=true and an empty shape.
struct Type {
    DType dtype = DType::fp32;
    bool tensor = false;
    std::vector<int64_t> shape;  // empty for scalars and rank-0 tensors

    int64_t numel() const;
    size_t rank() const { return shape.size(); }
    std::string str() const;  // canonical spelling: "tensor<fp16, [1, 768, 1, 256]>" / "fp16"
    bool operator==(const Type& o) const { return dtype == o.dtype && tensor == o.tensor && shape == o.shape; }
    bool operator!=(const Type& o) const { return !(*this == o); }
    // Same dtype and shape, ignoring the scalar/rank-0-tensor spelling difference.
    bool same_value_type(const Type& o) const { return dtype == o.dtype && shape == o.shape; }
};

// Every parse or validation problem. what() reads "MIL line N: <problem>" (line 0: no line).
class MilError : public std::runtime_error {
public:
    MilError(int line, const std::string& msg);
    int line() const { return line_; }
    const std::string& problem() const { return problem_; }

private:
    int line_;
    std::string problem_;
};

// A literal: inline numbers/strings, or a BLOBFILE reference.
struct Literal {
    Type type;
    std::vector<double> numbers;       // numeric and bool elements, row-major (bool: 0/1)
    std::vector<std::string> strings;  // string elements
    bool is_blob = false;
    std::string blob_path;             // e.g. "@model_path/weights/wq.bin"
    uint64_t blob_offset = 0;          // byte offset of the blob's 64-byte metadata record
};

// An operand: a variable name, a literal, or a tuple such as concat's values=(a, b, c).
struct Arg {
    enum class Kind { Ref, Literal, Tuple };
    Kind kind = Kind::Ref;
    std::string ref;
    Literal literal;
    std::vector<Arg> items;
};

using NamedArgs = std::vector<std::pair<std::string, Arg>>;

// One statement: <type> <out> = <op>(<args>)[<attrs>];
// Multi-output ops (split) declare several typed outputs: `tensor<..> a, tensor<..> b = split(...)`.
struct Op {
    int line = 0;
    std::string type;                  // "conv", "const", ...
    std::vector<std::string> outputs;
    std::vector<Type> output_types;
    NamedArgs args;                    // inside (...), in source order
    NamedArgs attrs;                   // inside [...], in source order; includes "name"
    const Arg* arg(std::string_view key) const;   // nullptr when absent
    const Arg* attr(std::string_view key) const;  // nullptr when absent
    // An operand looked up in args first, then attrs (const's val and constexpr ops put
    // operands in the bracket).
    const Arg* operand(std::string_view key) const;
};

struct Param {
    std::string name;
    Type type;
    int line = 0;
};

struct Function {
    std::string name;                  // "main"
    std::string opset;                 // "ios18"
    int line = 0;
    std::vector<Param> inputs;
    std::vector<Op> ops;
    std::vector<std::string> outputs;  // names in the return tuple
    int outputs_line = 0;
};

// The buildInfo attribute line of a program, e.g. [buildInfo = dict<string, string>({{"k", "v"}})];
// verbose: keys and values typed as rank-0 string tensors (the spelling of older chips).
std::string build_info_text(const std::vector<std::pair<std::string, std::string>>& info, bool verbose);
// The buildInfo every generated program carries: coremltools' component versions, or for the
// verbose spelling only the compiler version.
std::vector<std::pair<std::string, std::string>> standard_build_info(bool verbose);

// The scalar spelling `f` uses for its `name` attributes (verbose: rank-0 tensor, the spelling of
// older chips); false when no statement has a name.
bool uses_verbose_scalars(const Function& f);

struct Program {
    std::string version;               // "1.3"
    std::vector<std::pair<std::string, std::string>> build_info;
    std::vector<Function> functions;
    const Function& main() const;      // throws MilError when there is no "main"
};

// Parse MIL text. Checks the grammar, and name resolution within each function: every
// referenced name is a parameter or an earlier output, no name is defined twice, every
// returned name exists. Op semantics (known ops, attributes, shapes) are the backend's job.
// Any input gives a Program or a MilError; never a crash or a hang.
Program parse(std::string_view text);

// Canonical text of a program; parse(print(p)) reproduces p.
std::string print(const Program& p);

}  // namespace anetrain::mil
