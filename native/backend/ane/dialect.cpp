#include "backend/ane/dialect.h"

#include <cctype>
#include <stdexcept>

namespace anetrain::backend::ane {

std::string MilDialect::str() const { return version + "/" + opset + (verbose_scalars ? "-verbose" : ""); }

std::string ChipInfo::chip_family(const std::string& brand) {
    const std::string prefix = "Apple M";
    size_t at = brand.find(prefix);
    if (at == std::string::npos) return "";
    size_t i = at + prefix.size(), j = i;
    while (j < brand.size() && std::isdigit(static_cast<unsigned char>(brand[j]))) ++j;
    if (j == i) return "";
    return "M" + brand.substr(i, j - i);
}

// Evidence (shared reference ane-facts.md 2.1, 9.2): the shorthand scalar spelling only parses on
// M4-class compilers and an M1 port used program(1.0)/ios16 with verbose scalars; M2 has no data of
// its own and is treated like M1. M3, M4 and M5 run program(1.3)/ios18 as the training code emits it.
bool dialect_for_family(const std::string& family, MilDialect* out) {
    struct Row {
        const char* family;
        MilDialect dialect;
    };
    static const Row table[] = {
        {"M1", {"1.0", "ios16", true}},
        {"M2", {"1.0", "ios16", true}},
        {"M3", {"1.3", "ios18", false}},
        {"M4", {"1.3", "ios18", false}},
        {"M5", {"1.3", "ios18", false}},
    };
    for (const Row& r : table)
        if (family == r.family) {
            *out = r.dialect;
            return true;
        }
    return false;
}

static bool is_version(const std::string& s) {
    size_t dot = s.find('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == s.size()) return false;
    for (size_t i = 0; i < s.size(); ++i)
        if (i != dot && !std::isdigit(static_cast<unsigned char>(s[i]))) return false;
    return true;
}

static bool is_opset(const std::string& s) {
    if (s.empty()) return false;
    for (char c : s)
        if (!std::isalnum(static_cast<unsigned char>(c))) return false;
    return true;
}

MilDialect parse_dialect(const std::string& spec) {
    const std::string usage = "ANETRAIN_MIL_DIALECT must look like 1.3/ios18 or 1.0/ios16-verbose, got '" + spec + "'";
    size_t slash = spec.find('/');
    if (slash == std::string::npos) throw std::invalid_argument(usage);
    MilDialect d;
    d.version = spec.substr(0, slash);
    d.opset = spec.substr(slash + 1);
    const std::string suffix = "-verbose";
    if (d.opset.size() > suffix.size() && d.opset.compare(d.opset.size() - suffix.size(), suffix.size(), suffix) == 0) {
        d.verbose_scalars = true;
        d.opset.resize(d.opset.size() - suffix.size());
    }
    if (!is_version(d.version) || !is_opset(d.opset)) throw std::invalid_argument(usage);
    return d;
}

DialectChoice choose_dialect(const ChipInfo& chip, const char* env_override) {
    if (env_override && *env_override) return {parse_dialect(env_override), "env"};
    DialectChoice c;
    if (dialect_for_family(chip.family(), &c.dialect)) {
        c.source = "detected";
        return c;
    }
    c.dialect = MilDialect{};
    c.source = "default";
    return c;
}

}  // namespace anetrain::backend::ane
