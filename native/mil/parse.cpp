// MIL text parser (recursive descent over a small tokenizer) and the canonical printer.
// Robust on arbitrary bytes: every failure is a MilError naming the line, recursion is bounded,
// numbers go through checked conversions, and declared shapes are never allocated here.
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <set>

#include "mil/ir.h"

namespace anetrain::mil {

namespace {

constexpr int kMaxDepth = 32;            // nesting of tuples / bracketed literal payloads
constexpr int64_t kMaxDim = int64_t(1) << 40;
constexpr int64_t kMaxNumel = int64_t(1) << 48;

enum class Tok { End, Ident, Number, String, Punct };

struct Token {
    Tok kind = Tok::End;
    std::string text;  // identifier, number spelling, unescaped string, or the punctuation
    int line = 1;
};

bool is_ident_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_ident_char(char c) { return is_ident_start(c) || (c >= '0' && c <= '9'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string printable(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (out.size() > 40) return out + "...";
        unsigned char u = static_cast<unsigned char>(c);
        if (u >= 32 && u < 127) {
            out += c;
        } else {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\x%02x", u);
            out += buf;
        }
    }
    return out;
}

std::vector<Token> tokenize(std::string_view s) {
    std::vector<Token> toks;
    int line = 1;
    size_t i = 0, n = s.size();
    while (i < n) {
        char c = s[i];
        if (c == '\n') {
            ++line;
            ++i;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r') {
            ++i;
            continue;
        }
        if (c == '/' && i + 1 < n && s[i + 1] == '/') {
            while (i < n && s[i] != '\n') ++i;
            continue;
        }
        Token t;
        t.line = line;
        if (is_ident_start(c)) {
            size_t b = i;
            while (i < n && is_ident_char(s[i])) ++i;
            t.kind = Tok::Ident;
            t.text = std::string(s.substr(b, i - b));
        } else if (is_digit(c) || ((c == '-' || c == '+' || c == '.') && i + 1 < n && (is_digit(s[i + 1]) || s[i + 1] == '.'))) {
            // A number spelling: sign, digits, hex digits, '.', exponent with sign. strtod decides later.
            size_t b = i;
            if (c == '-' || c == '+') ++i;
            while (i < n) {
                char d = s[i];
                char before = i > b ? s[i - 1] : 0;
                bool exp_sign = (d == '-' || d == '+') && i > b &&
                                (before == 'e' || before == 'E' || before == 'p' || before == 'P');
                if (is_ident_char(d) || d == '.' || exp_sign)
                    ++i;
                else
                    break;
            }
            t.kind = Tok::Number;
            t.text = std::string(s.substr(b, i - b));
        } else if (c == '"') {
            ++i;
            std::string v;
            bool closed = false;
            while (i < n) {
                char d = s[i++];
                if (d == '"') {
                    closed = true;
                    break;
                }
                if (d == '\n') throw MilError(line, "string literal runs past the end of the line; close it with \"");
                if (d == '\\') {
                    if (i >= n) break;
                    char e = s[i++];
                    if (e == 'n') v += '\n';
                    else if (e == 't') v += '\t';
                    else v += e;
                } else {
                    v += d;
                }
            }
            if (!closed) throw MilError(line, "unterminated string literal; close it with \"");
            t.kind = Tok::String;
            t.text = std::move(v);
        } else if (c == '-' && i + 1 < n && s[i + 1] == '>') {
            t.kind = Tok::Punct;
            t.text = "->";
            i += 2;
        } else if (std::string_view("()[]{}<>,=;-").find(c) != std::string_view::npos) {
            t.kind = Tok::Punct;
            t.text = std::string(1, c);
            ++i;
        } else {
            throw MilError(line, "unexpected character '" + printable(std::string(1, c)) + "'");
        }
        toks.push_back(std::move(t));
    }
    Token end;
    end.line = line;
    toks.push_back(end);
    return toks;
}

std::string describe(const Token& t) {
    switch (t.kind) {
        case Tok::End: return "end of text";
        case Tok::String: return "string \"" + printable(t.text) + "\"";
        default: return "'" + printable(t.text) + "'";
    }
}

class Parser {
public:
    explicit Parser(std::string_view text) : toks_(tokenize(text)) {}

    Program program() {
        Program p;
        expect_ident("program");
        expect("(");
        if (peek().kind != Tok::Number) fail("expected a program version such as 1.3 after 'program('");
        p.version = next().text;
        if (!valid_version(p.version)) fail_at(prev(), "program version '" + printable(p.version) + "' is not of the form MAJOR.MINOR");
        expect(")");
        if (accept("[")) {
            build_info(&p);
            expect("]");
        }
        expect("{");
        while (!is_punct("}")) {
            if (peek().kind == Tok::End) fail("program body is not closed; add '}'");
            p.functions.push_back(function());
        }
        expect("}");
        if (peek().kind != Tok::End) fail("unexpected " + describe(peek()) + " after the end of the program");
        if (p.functions.empty()) fail_at(prev(), "the program has no functions");
        std::set<std::string> names;
        for (const auto& f : p.functions)
            if (!names.insert(f.name).second) throw MilError(f.line, "function '" + f.name + "' is defined twice");
        return p;
    }

private:
    std::vector<Token> toks_;
    size_t pos_ = 0;
    int depth_ = 0;

    const Token& peek(size_t k = 0) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
    const Token& prev() const { return toks_[pos_ ? pos_ - 1 : 0]; }
    const Token& next() {
        const Token& t = toks_[pos_];
        if (pos_ + 1 < toks_.size()) ++pos_;
        return t;
    }
    [[noreturn]] void fail(const std::string& msg) const { throw MilError(peek().line, msg); }
    [[noreturn]] void fail_at(const Token& t, const std::string& msg) const { throw MilError(t.line, msg); }

    bool is_punct(const char* p) const { return peek().kind == Tok::Punct && peek().text == p; }
    bool accept(const char* p) {
        if (!is_punct(p)) return false;
        next();
        return true;
    }
    void expect(const char* p) {
        if (!accept(p)) fail(std::string("expected '") + p + "' but found " + describe(peek()));
    }
    void expect_ident(const char* word) {
        if (peek().kind != Tok::Ident || peek().text != word)
            fail(std::string("expected '") + word + "' but found " + describe(peek()));
        next();
    }
    std::string ident(const char* what) {
        if (peek().kind != Tok::Ident) fail(std::string("expected ") + what + " but found " + describe(peek()));
        return next().text;
    }

    static bool valid_version(const std::string& v) {
        size_t dot = v.find('.');
        if (dot == std::string::npos || dot == 0 || dot + 1 == v.size()) return false;
        for (size_t i = 0; i < v.size(); ++i)
            if (i != dot && !is_digit(v[i])) return false;
        return true;
    }

    // buildInfo = dict<K, V>({{"k", "v"}, ...}) with K, V each `string` or `tensor<string, []>`.
    void build_info(Program* p) {
        expect_ident("buildInfo");
        expect("=");
        expect_ident("dict");
        expect("<");
        string_type();
        expect(",");
        string_type();
        expect(">");
        expect("(");
        expect("{");
        if (!is_punct("}")) {
            do {
                expect("{");
                std::string k = string_token();
                expect(",");
                std::string v = string_token();
                expect("}");
                p->build_info.emplace_back(std::move(k), std::move(v));
            } while (accept(","));
        }
        expect("}");
        expect(")");
    }
    void string_type() {
        Type t = type();
        if (t.dtype != DType::string || !t.shape.empty()) fail_at(prev(), "buildInfo keys and values must be strings");
    }
    std::string string_token() {
        if (peek().kind != Tok::String) fail("expected a string but found " + describe(peek()));
        return next().text;
    }

    Type type() {
        const Token& t = peek();
        if (t.kind != Tok::Ident) fail("expected a type but found " + describe(t));
        Type ty;
        if (t.text == "tensor") {
            next();
            expect("<");
            ty.tensor = true;
            ty.dtype = dtype(ident("a dtype"));
            expect(",");
            expect("[");
            int64_t numel = 1;
            if (!is_punct("]")) {
                do {
                    const Token& d = peek();
                    if (d.kind != Tok::Number) fail("expected a dimension but found " + describe(d));
                    int64_t v = integer(next(), 0, kMaxDim, "dimension");
                    if (ty.shape.size() >= 16) fail_at(d, "tensor rank above 16");
                    ty.shape.push_back(v);
                    if (v && numel > kMaxNumel / v) fail_at(d, "tensor shape has too many elements");
                    numel *= v;
                } while (accept(","));
            }
            expect("]");
            expect(">");
        } else {
            next();
            ty.dtype = dtype(t.text);
        }
        return ty;
    }
    DType dtype(const std::string& name) {
        DType d;
        if (!dtype_from_name(name, &d)) fail_at(prev(), "unknown dtype '" + printable(name) + "'");
        return d;
    }
    int64_t integer(const Token& t, int64_t lo, int64_t hi, const char* what) {
        double v = number(t);
        if (!(v == std::floor(v)) || v < double(lo) || v > double(hi))
            fail_at(t, std::string(what) + " '" + printable(t.text) + "' is not an integer in [" + std::to_string(lo) +
                           ", " + std::to_string(hi) + "]");
        return int64_t(v);
    }
    double number(const Token& t) {
        std::string s = t.text;
        if (s.empty() || s.size() > 64) fail_at(t, "malformed number '" + printable(s) + "'");
        errno = 0;
        char* end = nullptr;
        double v = std::strtod(s.c_str(), &end);
        if (end != s.c_str() + s.size()) fail_at(t, "malformed number '" + printable(s) + "'");
        return v;  // overflow gives +-inf, which the caller's range checks reject where it matters
    }

    Function function() {
        Function f;
        f.line = peek().line;
        expect_ident("func");
        f.name = ident("a function name");
        expect("<");
        f.opset = ident("an opset such as ios18");
        expect(">");
        expect("(");
        std::set<std::string> defined;
        if (!is_punct(")")) {
            do {
                Param prm;
                prm.line = peek().line;
                prm.type = type();
                prm.name = ident("a parameter name");
                if (!defined.insert(prm.name).second) fail_at(prev(), "parameter '" + prm.name + "' is defined twice");
                f.inputs.push_back(std::move(prm));
            } while (accept(","));
        }
        expect(")");
        expect("{");
        while (!is_punct("}")) {
            if (peek().kind == Tok::End) fail("function '" + f.name + "' is not closed; add '}'");
            f.ops.push_back(statement(defined));
        }
        expect("}");
        expect("->");
        expect("(");
        f.outputs_line = peek().line;
        if (!is_punct(")")) {
            do {
                std::string o = ident("a returned name");
                if (!defined.count(o)) fail_at(prev(), "returned name '" + o + "' is not defined in function '" + f.name + "'");
                f.outputs.push_back(std::move(o));
            } while (accept(","));
        }
        expect(")");
        expect(";");
        if (f.outputs.empty()) fail_at(prev(), "function '" + f.name + "' returns nothing");
        return f;
    }

    Op statement(std::set<std::string>& defined) {
        Op op;
        op.line = peek().line;
        do {
            op.output_types.push_back(type());
            op.outputs.push_back(ident("an output name"));
        } while (accept(","));
        expect("=");
        op.type = ident("an op name");
        expect("(");
        if (!is_punct(")")) named_args(&op.args, defined);
        expect(")");
        if (accept("[")) {
            if (!is_punct("]")) named_args(&op.attrs, defined);
            expect("]");
        }
        expect(";");
        for (const auto& o : op.outputs)
            if (!defined.insert(o).second) throw MilError(op.line, "name '" + o + "' is defined twice");
        return op;
    }

    void named_args(NamedArgs* out, const std::set<std::string>& defined) {
        do {
            const Token& k = peek();
            std::string key = ident("an argument name");
            for (const auto& kv : *out)
                if (kv.first == key) fail_at(k, "argument '" + key + "' is given twice");
            expect("=");
            out->emplace_back(std::move(key), value(defined));
        } while (accept(","));
    }

    Arg value(const std::set<std::string>& defined) {
        if (++depth_ > kMaxDepth) fail("operands nested too deeply");
        Arg a;
        const Token& t = peek();
        DType d;
        if (accept("(")) {
            a.kind = Arg::Kind::Tuple;
            if (!is_punct(")")) {
                do a.items.push_back(value(defined));
                while (accept(","));
            }
            expect(")");
        } else if (t.kind == Tok::Ident && (t.text == "tensor" || dtype_from_name(t.text, &d)) &&
                   peek(1).kind == Tok::Punct && (peek(1).text == "(" || peek(1).text == "<")) {
            a.kind = Arg::Kind::Literal;
            a.literal = literal();
        } else if (t.kind == Tok::Ident) {
            next();
            if (!defined.count(t.text)) fail_at(t, "name '" + t.text + "' is used before it is defined");
            a.kind = Arg::Kind::Ref;
            a.ref = t.text;
        } else {
            fail("expected a value but found " + describe(t));
        }
        --depth_;
        return a;
    }

    Literal literal() {
        Literal lit;
        const Token& start = peek();
        lit.type = type();
        if (lit.type.dtype == DType::string && lit.type.tensor && !lit.type.shape.empty() && lit.type.numel() > (int64_t(1) << 24))
            fail_at(start, "string tensor literal too large");
        expect("(");
        if (peek().kind == Tok::Ident && peek().text == "BLOBFILE") {
            blobfile(&lit);
        } else {
            elements(&lit, lit.type.dtype);
            int64_t want = lit.type.numel();
            int64_t got = int64_t(lit.type.dtype == DType::string ? lit.strings.size() : lit.numbers.size());
            if (got != want)
                fail_at(start, "literal " + lit.type.str() + " has " + std::to_string(got) + " element(s) but its shape needs " +
                                   std::to_string(want));
        }
        expect(")");
        return lit;
    }

    void blobfile(Literal* lit) {
        next();  // BLOBFILE
        if (!lit->type.tensor || lit->type.dtype == DType::string) fail_at(prev(), "BLOBFILE needs a numeric tensor type");
        expect("(");
        expect_ident("path");
        expect("=");
        Literal path = literal();
        if (path.type.dtype != DType::string || path.strings.size() != 1) fail_at(prev(), "BLOBFILE path must be a string");
        expect(",");
        expect_ident("offset");
        expect("=");
        const Token& ot = peek();
        Literal off = literal();
        if (is_float(off.type.dtype) || off.type.dtype == DType::string || off.type.dtype == DType::bool_ || off.numbers.size() != 1 ||
            off.numbers[0] < 0 || off.numbers[0] > 9.0e15)
            fail_at(ot, "BLOBFILE offset must be a non-negative integer such as uint64(64)");
        expect(")");
        lit->is_blob = true;
        lit->blob_path = path.strings[0];
        lit->blob_offset = uint64_t(off.numbers[0]);
    }

    // Elements: a scalar, or bracketed (possibly nested) lists, flattened row-major.
    void elements(Literal* lit, DType d) {
        if (accept("[")) {
            if (++depth_ > kMaxDepth) fail("literal nested too deeply");
            if (!is_punct("]")) {
                do elements(lit, d);
                while (accept(","));
            }
            expect("]");
            --depth_;
            return;
        }
        const Token& t = peek();
        if (d == DType::string) {
            lit->strings.push_back(string_token());
            return;
        }
        if (d == DType::bool_) {
            if (t.kind == Tok::Ident && (t.text == "true" || t.text == "false")) {
                next();
                lit->numbers.push_back(t.text == "true" ? 1.0 : 0.0);
                return;
            }
            if (t.kind == Tok::Number) {
                lit->numbers.push_back(double(integer(next(), 0, 1, "bool value")));
                return;
            }
            fail("expected true or false but found " + describe(t));
        }
        lit->numbers.push_back(numeric_element(d));
        if (lit->numbers.size() > (size_t(1) << 28)) fail_at(t, "literal too large");
    }

    double numeric_element(DType d) {
        bool neg = false;
        const Token* t = &peek();
        if (t->kind == Tok::Punct && t->text == "-") {
            next();
            neg = true;
            t = &peek();
        }
        double v;
        if (t->kind == Tok::Ident && (t->text == "inf" || t->text == "nan")) {
            next();
            v = t->text == "inf" ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
        } else if (t->kind == Tok::Number) {
            v = number(next());
        } else {
            fail("expected a number but found " + describe(*t));
        }
        if (neg) v = -v;
        if (!is_float(d)) {
            double lo = 0, hi = 0;
            switch (d) {
                case DType::int32: lo = -2147483648.0; hi = 2147483647.0; break;
                case DType::int16: lo = -32768; hi = 32767; break;
                case DType::int8: lo = -128; hi = 127; break;
                case DType::uint16: lo = 0; hi = 65535; break;
                case DType::uint8: lo = 0; hi = 255; break;
                default: lo = 0; hi = 18446744073709551615.0; break;  // uint64
            }
            if (!(v == std::floor(v)) || v < lo || v > hi)
                fail_at(prev(), "value '" + printable(prev().text) + "' does not fit " + dtype_name(d));
        }
        return v;
    }
};

// ------------------------------------------------------------------------------ printing

std::string quoted(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out + "\"";
}

std::string number_text(double v, DType d) {
    if (d == DType::bool_) return v != 0 ? "true" : "false";
    if (std::isnan(v)) return "nan";
    if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
    char buf[40];
    if (v == std::floor(v) && std::fabs(v) < 1e18) {
        std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
        std::string s = buf;
        if (is_float(d) && v == 0 && std::signbit(v)) s = "-0.0";
        else if (is_float(d)) s += ".0";
        return s;
    }
    // Plain decimal, the spelling of every program known to train (a packed program goes from here
    // to the ANE compiler); shortest digits that read back to the same double.
    char fixed[400];  // the longest fixed double, 1e-308's 300-odd decimal places, fits
    auto r = std::to_chars(fixed, fixed + sizeof fixed, v, std::chars_format::fixed);
    if (r.ec == std::errc() && r.ptr - fixed <= 64) return std::string(fixed, r.ptr);
    std::snprintf(buf, sizeof buf, "%.17g", v);  // beyond what the tokenizer takes in plain decimal
    return buf;
}

// verbose: the rank-0 tensor spelling of older chips, for the scalars inside BLOBFILE too.
std::string literal_text(const Literal& l, bool verbose) {
    std::string s = l.type.str() + "(";
    if (l.is_blob) {
        s += std::string("BLOBFILE(path = ") + (verbose ? "tensor<string, []>(" : "string(") + quoted(l.blob_path) +
             "), offset = " + (verbose ? "tensor<uint64, []>(" : "uint64(") + std::to_string(l.blob_offset) + "))";
        return s + ")";
    }
    bool bracket = l.type.tensor && !l.type.shape.empty();
    if (bracket) s += "[";
    size_t n = l.type.dtype == DType::string ? l.strings.size() : l.numbers.size();
    for (size_t i = 0; i < n; ++i) {
        if (i) s += ", ";
        s += l.type.dtype == DType::string ? quoted(l.strings[i]) : number_text(l.numbers[i], l.type.dtype);
    }
    if (bracket) s += "]";
    return s + ")";
}

std::string arg_text(const Arg& a, bool verbose) {
    switch (a.kind) {
        case Arg::Kind::Ref: return a.ref;
        case Arg::Kind::Literal: return literal_text(a.literal, verbose);
        case Arg::Kind::Tuple: {
            std::string s = "(";
            for (size_t i = 0; i < a.items.size(); ++i) s += (i ? ", " : "") + arg_text(a.items[i], verbose);
            return s + ")";
        }
    }
    return "";
}

std::string named_text(const NamedArgs& args, bool verbose) {
    std::string s;
    for (size_t i = 0; i < args.size(); ++i)
        s += (i ? ", " : "") + args[i].first + " = " + arg_text(args[i].second, verbose);
    return s;
}

}  // namespace

Program parse(std::string_view text) { return Parser(text).program(); }

std::string print(const Program& p) {
    // A program spells its scalars one way throughout (the ANE's parsers take one or the other).
    bool verbose = false;
    for (const auto& f : p.functions) verbose = verbose || uses_verbose_scalars(f);
    std::string s = "program(" + p.version + ")\n";
    if (!p.build_info.empty()) s += build_info_text(p.build_info, verbose) + "\n";
    s += "{\n";
    for (const auto& f : p.functions) {
        s += "    func " + f.name + "<" + f.opset + ">(";
        for (size_t i = 0; i < f.inputs.size(); ++i) s += (i ? ", " : "") + f.inputs[i].type.str() + " " + f.inputs[i].name;
        s += ") {\n";
        for (const auto& op : f.ops) {
            s += "        ";
            for (size_t i = 0; i < op.outputs.size(); ++i) s += (i ? ", " : "") + op.output_types[i].str() + " " + op.outputs[i];
            s += " = " + op.type + "(" + named_text(op.args, verbose) + ")";
            if (!op.attrs.empty()) s += "[" + named_text(op.attrs, verbose) + "]";
            s += ";\n";
        }
        s += "    } -> (";
        for (size_t i = 0; i < f.outputs.size(); ++i) s += (i ? ", " : "") + f.outputs[i];
        s += ");\n";
    }
    return s + "}\n";
}

}  // namespace anetrain::mil
