#include "backend/ane/dialect.h"

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

// Evidence (shared reference ane-facts.md 2.1, 9.2): the shorthand scalar spelling only parses on
// M4-class compilers and an M1 port used program(1.0)/ios16 with verbose scalars; M2 has no data of
// its own and is treated like M1. M3, M4 and M5 run program(1.3)/ios18 as the training code emits it.
bool dialect_for_family(const std::string& family, mil::Dialect* out) {
    struct Row {
        const char* family;
        const char* dialect;
    };
    static const Row table[] = {
        {"M1", "1.0/ios16-verbose"}, {"M2", "1.0/ios16-verbose"}, {"M3", "1.3/ios18"},
        {"M4", "1.3/ios18"},         {"M5", "1.3/ios18"},
    };
    for (const Row& r : table)
        if (family == r.family) {
            *out = mil::Dialect::from_string(r.dialect);
            return true;
        }
    return false;
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
