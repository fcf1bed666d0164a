// Which MIL dialect the ANE compiler of this Mac accepts, chosen from the chip (portable C++).
// The MIL builder takes a MilDialect; the choice is a table from chip family to dialect, with
// the ANETRAIN_MIL_DIALECT environment override for chips we have no data for.
#pragma once
#include <string>

namespace anetrain::backend::ane {

// The spelling the MIL builder emits: `program(<version>)`, `func main<<opset>>`, and scalars
// written verbosely (`tensor<int32, []>(1)`) instead of in shorthand (`int32(1)`).
struct MilDialect {
    std::string version = "1.3";
    std::string opset = "ios18";
    bool verbose_scalars = false;
    std::string str() const;  // "1.3/ios18", "1.0/ios16-verbose"
};

// What the machine says about itself. Empty strings when unknown (and everywhere off macOS).
struct ChipInfo {
    std::string brand;        // sysctl machdep.cpu.brand_string, e.g. "Apple M1 Pro"
    std::string model;        // sysctl hw.model, e.g. "Mac14,5"
    std::string ane_subtype;  // _ANEDeviceInfo's ANE sub-type when the framework answers
    std::string family() const { return chip_family(brand); }
    static std::string chip_family(const std::string& brand);  // "M1".."M5"; "" when not Apple M-series
};

// The dialect table: true and *out set when the family has an entry.
bool dialect_for_family(const std::string& family, MilDialect* out);

// Parse "<version>/<opset>[-verbose]", e.g. "1.3/ios18", "1.5/ios17", "1.0/ios16-verbose".
// Throws std::invalid_argument naming the accepted form.
MilDialect parse_dialect(const std::string& spec);

struct DialectChoice {
    MilDialect dialect;
    std::string source;  // "env" (override), "detected" (chip in the table), "default"
};

// env_override: the value of ANETRAIN_MIL_DIALECT (nullptr or "" when unset).
DialectChoice choose_dialect(const ChipInfo& chip, const char* env_override);

}  // namespace anetrain::backend::ane
