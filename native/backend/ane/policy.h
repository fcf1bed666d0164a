// The ANE backend's settings and the backend-choice policy (portable C++, tested on Linux):
// compile budget, QoS, multi-input requests, strict mode, which backend "auto" means, which ops
// the ANE compiles. The fallback itself is backend/fallback.h.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "backend/backend.h"

namespace anetrain::backend::ane {

// The ANE compiler fails after about 119 compiles per process, a number that is not exact:
// restart well before it.
constexpr int64_t kDefaultCompileBudget = 100;
constexpr unsigned kDefaultQos = 21;            // the QoS every training program uses
constexpr unsigned kMaxQos = 63;                // the probed range 0..63 all work

// Environment values (nullptr or "" = unset) turned into settings; bad values throw
// std::invalid_argument with one line naming the variable and what it accepts.
int64_t parse_compile_budget(const char* env);           // ANETRAIN_ANE_COMPILE_BUDGET: N >= 0, or -1 = unlimited
unsigned parse_qos(const char* env);                     // ANETRAIN_ANE_QOS: 0..63
bool parse_flag(const char* env, const char* variable, bool fallback);  // 0/1/true/false/yes/no/on/off

struct AneOptions {
    int64_t compile_budget = kDefaultCompileBudget;
    unsigned qos = kDefaultQos;
    // false: a program with several inputs is rewritten to take one packed input surface (the
    // known-good layout); true: one IOSurface per MIL input in the request.
    bool multi_input = false;
};
// Reads ANETRAIN_ANE_COMPILE_BUDGET, ANETRAIN_ANE_QOS, ANETRAIN_ANE_MULTI_INPUT.
AneOptions options_from_env();

// ANETRAIN_STRICT=1: with backend "auto", a kernel the ANE cannot run is an error instead of
// running on ref (FallbackBackend strict).
bool strict_from_env();

// Backend name resolution. `requested` is "ane", "ref", "auto" or "" (= auto); an explicit name
// wins over ANETRAIN_BACKEND (env), which wins over auto. auto = "ane" when the framework
// loads, else "ref". Throws std::invalid_argument for unknown names, and for "ane" when it is
// unavailable (the message carries `unavailable_reason`).
std::string resolve_backend_name(const std::string& requested, const char* env, bool ane_available,
                                 const std::string& unavailable_reason);

// Whether the ANE rules (rules.h) allow `op` on a chip family (an unlisted family: the rules
// every family shares).
bool ane_supports_op(const std::string& op, const std::string& chip_family);

}  // namespace anetrain::backend::ane
