#include "backend/ane/dialect.h"

#include "backend/ane/rules.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace anetrain::backend::ane {

std::string ChipInfo::chip_family(const std::string& brand) {
    const std::string prefix = "Apple M";
    size_t at = brand.find(prefix);
    if (at == std::string::npos) return "";
    size_t i = at + prefix.size(), j = i;
    while (j < brand.size() && std::isdigit(static_cast<unsigned char>(brand[j]))) ++j;
    if (j == i) return "";
    return "M" + brand.substr(i, j - i);
}

// The first dialect the ANE rules list for the family (rules.h; docs/ane-rules.md): program(1.3)
// with ios18 everywhere, the spelling of every program known to train, including on M1 Pro/Max.
bool dialect_for_family(const std::string& family, mil::Dialect* out) {
    const std::vector<std::string> known = rule_families();
    if (std::find(known.begin(), known.end(), family) == known.end()) return false;
    *out = mil::Dialect::from_string(rules_for(family).dialects.at(0));
    return true;
}

DialectChoice choose_dialect(const ChipInfo& chip, const char* env_override) {
    if (env_override && *env_override) {
        try {
            return {mil::Dialect::from_string(env_override), "env"};
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(std::string("ANETRAIN_MIL_DIALECT: ") + e.what());
        }
    }
    DialectChoice c;
    c.source = dialect_for_family(chip.family(), &c.dialect) ? "detected" : "default";
    return c;
}

}  // namespace anetrain::backend::ane
