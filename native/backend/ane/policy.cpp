#include "backend/ane/policy.h"

#include <algorithm>

#include "backend/ane/rules.h"

#include <cerrno>
#include <cstdlib>
#include <set>
#include <stdexcept>

namespace anetrain::backend::ane {

namespace {

bool unset(const char* env) { return env == nullptr || *env == '\0'; }

// Whole-string base-10 integer; false on junk, overflow or trailing characters.
bool parse_int(const char* s, long long* out) {
    errno = 0;
    char* end = nullptr;
    long long v = std::strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') return false;
    *out = v;
    return true;
}

}  // namespace

int64_t parse_compile_budget(const char* env) {
    if (unset(env)) return kDefaultCompileBudget;
    long long v = 0;
    if (!parse_int(env, &v) || v < -1)
        throw std::invalid_argument(std::string("ANETRAIN_ANE_COMPILE_BUDGET must be a count >= 0 or -1 (unlimited), got '") +
                                    env + "'");
    return v;
}

unsigned parse_qos(const char* env) {
    if (unset(env)) return kDefaultQos;
    long long v = 0;
    if (!parse_int(env, &v) || v < 0 || v > kMaxQos)
        throw std::invalid_argument(std::string("ANETRAIN_ANE_QOS must be an integer 0..63, got '") + env + "'");
    return unsigned(v);
}

bool parse_flag(const char* env, const char* variable, bool fallback) {
    if (unset(env)) return fallback;
    const std::string v = env;
    if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
    if (v == "0" || v == "false" || v == "no" || v == "off") return false;
    throw std::invalid_argument(std::string(variable) + " must be 0 or 1, got '" + v + "'");
}

AneOptions options_from_env() {
    AneOptions o;
    o.compile_budget = parse_compile_budget(std::getenv("ANETRAIN_ANE_COMPILE_BUDGET"));
    o.qos = parse_qos(std::getenv("ANETRAIN_ANE_QOS"));
    o.multi_input = parse_flag(std::getenv("ANETRAIN_ANE_MULTI_INPUT"), "ANETRAIN_ANE_MULTI_INPUT", false);
    return o;
}

bool strict_from_env() { return parse_flag(std::getenv("ANETRAIN_STRICT"), "ANETRAIN_STRICT", false); }

std::string resolve_backend_name(const std::string& requested, const char* env, bool ane_available,
                                 const std::string& unavailable_reason) {
    std::string name = requested;
    std::string origin = "backend";
    if (name.empty() || name == "auto") {
        if (!unset(env)) {
            name = env;
            origin = "ANETRAIN_BACKEND";
        }
    }
    if (name.empty() || name == "auto") return ane_available ? "ane" : "ref";
    if (name == "ref") return name;
    if (name == "ane") {
        if (!ane_available)
            throw std::invalid_argument(origin + " 'ane' is not usable here (" + unavailable_reason +
                                        "); use 'ref' or 'auto'");
        return name;
    }
    throw std::invalid_argument(origin + " must be 'ane', 'ref' or 'auto', got '" + name + "'");
}

bool ane_supports_op(const std::string& op, const std::string& chip_family) {
    const std::vector<std::string> known = rule_families();
    const bool listed = std::find(known.begin(), known.end(), chip_family) != known.end();
    return rules_for(listed ? chip_family : "").ops.count(op) != 0;
}

}  // namespace anetrain::backend::ane
