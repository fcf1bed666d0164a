// Which MIL dialect the ANE compiler of this Mac accepts, chosen from the chip (portable C++).
// The MIL builder takes a mil::Dialect; the choice is a table from chip family to dialect, with
// the ANETRAIN_MIL_DIALECT environment override for chips we have no data for.
#pragma once
#include <string>

#include "mil/builder.h"

namespace anetrain::backend::ane {

// What the machine says about itself. Empty strings when unknown (and everywhere off macOS).
struct ChipInfo {
    std::string brand;        // sysctl machdep.cpu.brand_string, e.g. "Apple M1 Pro"
    std::string model;        // sysctl hw.model, e.g. "Mac14,5"
    std::string ane_subtype;  // _ANEDeviceInfo's ANE sub-type when the framework answers
    std::string family() const { return chip_family(brand); }
    static std::string chip_family(const std::string& brand);  // "M1".."M5"...; "" when not Apple M-series
};

// The dialect table: true and *out set when the family has an entry.
bool dialect_for_family(const std::string& family, mil::Dialect* out);

struct DialectChoice {
    mil::Dialect dialect;
    std::string source;  // "env" (override), "detected" (chip in the table), "default"
};

// env_override: the value of ANETRAIN_MIL_DIALECT (nullptr or "" when unset), parsed by
// mil::Dialect::from_string; a bad value throws std::invalid_argument naming the variable.
DialectChoice choose_dialect(const ChipInfo& chip, const char* env_override);

}  // namespace anetrain::backend::ane
