#include "backend/ane/rules.h"

#include <algorithm>
#include <iterator>
#include <map>
#include <stdexcept>

#include "backend/ane/packing.h"
#include "mil/builder.h"
#include "mil/ir.h"

namespace anetrain::backend::ane {

namespace {

// The ops of every program known to train (shared reference 2.9). M1 and M2 get matmul too: the
// static pipeline, whose attention is matmul, trained on M1 Pro/Max (9.2). One row per family, so
// a probe on one chip can change that chip alone.
const std::set<std::string>& trained_ops() {
    static const std::set<std::string> ops = {"const", "reshape", "transpose", "slice_by_size", "matmul",
                                              "mul",   "add",     "sub",       "concat",        "softmax",
                                              "sigmoid", "reduce_sum", "conv", "pow"};
    return ops;
}

struct FamilyRules {
    std::string family;
    std::set<std::string> ops;
    std::vector<std::string> dialects;
};

std::string spelled(const char* dialect) { return mil::Dialect::from_string(dialect).str(); }

// Every family trains with program(1.3)/ios18 and shorthand scalars (2.1, 9.2); M1 and M2 also
// keep the verbose program(1.0)/ios16 spelling of an M1 port (2.1), tried only when 1.3 fails to
// parse there.
const std::vector<FamilyRules>& table() {
    static const std::vector<FamilyRules> rows = {
        {"M1", trained_ops(), {spelled("1.3/ios18"), spelled("1.0/ios16-verbose")}},
        {"M2", trained_ops(), {spelled("1.3/ios18"), spelled("1.0/ios16-verbose")}},
        {"M3", trained_ops(), {spelled("1.3/ios18")}},
        {"M4", trained_ops(), {spelled("1.3/ios18")}},
        {"M5", trained_ops(), {spelled("1.3/ios18")}},
    };
    return rows;
}

std::string joined(const std::vector<std::string>& items) {
    std::string s;
    for (const auto& i : items) s += (s.empty() ? "" : ", ") + i;
    return s;
}

std::string chip_words(const RuleSet& rules) { return rules.family.empty() ? "any chip" : rules.family; }

class Report {
public:
    void add(int line, const std::string& rule, const std::string& what) {
        lines_.push_back((line > 0 ? "line " + std::to_string(line) + ": " : std::string()) + rule + ": " + what);
    }
    std::vector<std::string> take() { return std::move(lines_); }

private:
    std::vector<std::string> lines_;
};

// fp16 [1, C, 1, W]: the type of every input and output known to train.
bool is_io_type(const mil::Type& t) { return t.dtype == mil::DType::fp16 && is_channel_major(t); }

// Floating-point tensors of rank > 0 must be rank 4 with batch 1; scalars and the int32/bool/
// string tensors that carry shapes, permutations and flags are not activations. A conv weight is
// [OC, IC, KH, KW] by definition (shared reference 2.3, 2.4): it keeps rank 4 but not the leading 1.
bool breaks_rank_rule(const mil::Type& t, bool conv_weight) {
    if (!mil::is_float(t.dtype) || !t.tensor || t.rank() == 0) return false;
    return t.rank() != 4 || (!conv_weight && t.shape[0] != 1);
}

std::string rank_want(bool conv_weight) {
    return conv_weight ? "a conv weight is rank 4" : "floating-point tensors are rank 4 with a leading 1";
}

void check_literal_ranks(const mil::Arg& a, const mil::Op& op, bool conv_weight, Report& r) {
    if (a.kind == mil::Arg::Kind::Tuple) {
        for (const mil::Arg& item : a.items) check_literal_ranks(item, op, false, r);
    } else if (a.kind == mil::Arg::Kind::Literal && breaks_rank_rule(a.literal.type, conv_weight)) {
        r.add(op.line, "rank", "a " + a.literal.type.str() + " literal in '" + op.type + "': " + rank_want(conv_weight));
    }
}

void check_io(const mil::Function& f, const RuleSet& rules, Report& r) {
    const std::string many = rules.multi_io ? "" : " (several are allowed only where a probe recorded multi-input success)";
    if (f.inputs.empty() || (!rules.multi_io && f.inputs.size() != 1))
        r.add(f.line, "io-count", "main has " + std::to_string(f.inputs.size()) + " inputs, not one" + many);
    if (f.outputs.empty() || (!rules.multi_io && f.outputs.size() != 1))
        r.add(f.outputs_line, "io-count", "main has " + std::to_string(f.outputs.size()) + " outputs, not one" + many);

    std::map<std::string, mil::Type> types;
    for (const mil::Op& op : f.ops)
        for (size_t i = 0; i < op.outputs.size() && i < op.output_types.size(); ++i) types[op.outputs[i]] = op.output_types[i];
    auto check_one = [&](const char* role, const std::string& name, const mil::Type& t, int line) {
        if (!is_io_type(t)) {
            r.add(line, "io-shape", std::string(role) + " '" + name + "' is " + t.str() + ", not tensor<fp16, [1, C, 1, W]>");
            return;
        }
        const int64_t w = t.shape[3];
        const int64_t row_bytes = w * int64_t(mil::dtype_size(t.dtype));
        if (row_bytes % 64 != 0)
            r.add(line, "io-row",
                  std::string(role) + " '" + name + "' has width " + std::to_string(w) + ": a row of " +
                      std::to_string(row_bytes) + " bytes is not a multiple of 64 (W must be a multiple of 32)");
    };
    for (const mil::Param& p : f.inputs) check_one("input", p.name, p.type, p.line);
    for (const std::string& name : f.outputs) {
        auto it = types.find(name);
        if (it != types.end()) {
            check_one("output", name, it->second, f.outputs_line);
            continue;
        }
        for (const mil::Param& p : f.inputs)
            if (p.name == name) check_one("output", name, p.type, f.outputs_line);
    }
}

void check_ops(const mil::Function& f, const RuleSet& rules, Report& r) {
    std::set<std::string> conv_weights;
    for (const mil::Op& op : f.ops)
        if (const mil::Arg* w = op.type == "conv" ? op.operand("weight") : nullptr; w && w->kind == mil::Arg::Kind::Ref)
            conv_weights.insert(w->ref);
    // Inputs are held to io-shape, which is stricter than the rank rule; they are not reported twice.
    for (const mil::Op& op : f.ops) {
        if (!rules.ops.count(op.type))
            r.add(op.line, "op", "'" + op.type + "' is not among the ops of programs known to train on " + chip_words(rules));
        for (size_t i = 0; i < op.outputs.size() && i < op.output_types.size(); ++i) {
            const bool weight = op.type == "const" && conv_weights.count(op.outputs[i]);
            if (breaks_rank_rule(op.output_types[i], weight))
                r.add(op.line, "rank", "'" + op.outputs[i] + "' is " + op.output_types[i].str() + ": " + rank_want(weight));
        }
        if (op.type == "const") continue;  // its value is its output, checked above
        for (const auto& [key, a] : op.args) check_literal_ranks(a, op, op.type == "conv" && key == "weight", r);
        for (const auto& [key, a] : op.attrs) check_literal_ranks(a, op, op.type == "conv" && key == "weight", r);
    }
}

void check_dialect(const mil::Program& p, const mil::Function& f, const RuleSet& rules, Report& r) {
    const std::string spelling = mil::dialect_of(p.version, f).str();
    if (std::find(rules.dialects.begin(), rules.dialects.end(), spelling) == rules.dialects.end())
        r.add(f.line, "dialect", "the program is written in " + spelling + "; " + chip_words(rules) + " takes " + joined(rules.dialects));
}

bool ident_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool digit(char c) { return c >= '0' && c <= '9'; }
bool ident_char(char c) { return ident_start(c) || digit(c); }

// The parsed form keeps values, not their spelling, so exponent notation is found in the text:
// numeric tokens are those that begin outside an identifier, string and comment; a decimal one
// with an e/E is in exponent notation (in a hex float, e is a digit and p the exponent).
void check_literals(const std::string& text, Report& r) {
    int line = 1;
    size_t i = 0;
    const size_t n = text.size();
    while (i < n) {
        const char c = text[i];
        if (c == '\n') {
            ++line;
            ++i;
        } else if (c == '"') {
            for (++i; i < n && text[i] != '"'; ++i) {
                if (text[i] == '\\' && i + 1 < n) ++i;
                if (text[i] == '\n') ++line;
            }
            ++i;
        } else if (c == '/' && i + 1 < n && text[i + 1] == '/') {
            while (i < n && text[i] != '\n') ++i;
        } else if (ident_start(c)) {
            while (i < n && ident_char(text[i])) ++i;
        } else if (digit(c) || (c == '.' && i + 1 < n && digit(text[i + 1]))) {
            const size_t b = i;
            while (i < n) {
                const char d = text[i], before = i > b ? text[i - 1] : '\0';
                const bool exponent_sign = (d == '-' || d == '+') && i > b &&
                                           (before == 'e' || before == 'E' || before == 'p' || before == 'P');
                if (!(ident_char(d) || d == '.' || exponent_sign)) break;
                ++i;
            }
            const std::string token = text.substr(b, i - b);
            const bool hex = token.size() > 1 && token[0] == '0' && (token[1] == 'x' || token[1] == 'X');
            if (!hex && token.find_first_of("eE") != std::string::npos)
                r.add(line, "literal", "'" + token + "' is in exponent notation; write it in plain decimal");
        } else {
            ++i;
        }
    }
}

}  // namespace

std::vector<std::string> rule_families() {
    std::vector<std::string> out;
    for (const FamilyRules& row : table()) out.push_back(row.family);
    return out;
}

RuleSet rules_for(const std::string& chip_family, bool multi_io) {
    RuleSet rules;
    rules.family = chip_family;
    rules.multi_io = multi_io;
    if (!chip_family.empty()) {
        for (const FamilyRules& row : table())
            if (row.family == chip_family) {
                rules.ops = row.ops;
                rules.dialects = row.dialects;
                return rules;
            }
        throw std::invalid_argument("unknown chip family '" + chip_family + "'; the ANE rules know " +
                                    joined(rule_families()) + " (or none for any chip)");
    }
    // Any chip: only what every family allows.
    const std::vector<FamilyRules>& rows = table();
    rules.ops = rows.front().ops;
    rules.dialects = rows.front().dialects;
    for (const FamilyRules& row : rows) {
        std::set<std::string> ops;
        std::set_intersection(rules.ops.begin(), rules.ops.end(), row.ops.begin(), row.ops.end(), std::inserter(ops, ops.end()));
        rules.ops = std::move(ops);
        rules.dialects.erase(std::remove_if(rules.dialects.begin(), rules.dialects.end(),
                                            [&](const std::string& d) {
                                                return std::find(row.dialects.begin(), row.dialects.end(), d) == row.dialects.end();
                                            }),
                             rules.dialects.end());
    }
    return rules;
}

std::vector<std::string> check_program(const std::string& mil_text, const RuleSet& rules) {
    mil::Program program;
    try {
        program = mil::parse(mil_text);
    } catch (const mil::MilError& e) {
        return {std::string("parse: ") + e.what()};
    }
    Report r;
    const mil::Function* main = nullptr;
    for (const mil::Function& f : program.functions)
        if (f.name == "main") main = &f;
    if (program.functions.size() != 1)
        r.add(0, "function", "the program has " + std::to_string(program.functions.size()) + " functions, not one (main)");
    if (!main && !program.functions.empty()) {
        main = &program.functions.front();
        r.add(main->line, "function", "function '" + main->name + "' is not named main");
    }
    if (main) {
        check_io(*main, rules, r);
        check_ops(*main, rules, r);
        check_dialect(program, *main, rules, r);
    }
    check_literals(mil_text, r);
    return r.take();
}

}  // namespace anetrain::backend::ane
