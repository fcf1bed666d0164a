// The ANE backend's settings and the backend-choice policy (portable C++, tested on Linux):
// compile budget, QoS, multi-input requests, strict mode, which backend "auto" means, which ops
// the ANE compiles, and the compile-with-fallback rule.
#pragma once
#include <cstdint>
#include <functional>
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

// ANETRAIN_STRICT=1: a kernel that fails on the ANE is an error instead of falling back to ref.
bool strict_from_env();

// Backend name resolution. `requested` is "ane", "ref", "auto" or "" (= auto); an explicit name
// wins over ANETRAIN_BACKEND (env), which wins over auto. auto = "ane" when the framework
// loads, else "ref". Throws std::invalid_argument for unknown names, and for "ane" when it is
// unavailable (the message carries `unavailable_reason`).
std::string resolve_backend_name(const std::string& requested, const char* env, bool ane_available,
                                 const std::string& unavailable_reason);

// Ops the ANE compiler is recorded to accept (shared reference 2.3), per chip family:
// M1/M2 compilers lack cast, matmul and scaled_dot_product_attention.
bool ane_supports_op(const std::string& op, const std::string& chip_family);

// The one warning printed when a kernel falls back: names the kernel and the compiler's message.
std::string fallback_warning(const std::string& label, const std::string& message);

using CompileFn = std::function<std::unique_ptr<Kernel>()>;
using WarnFn = std::function<void(const std::string&)>;

// Compile with `primary`; when it throws BackendError (a compiler failure), warn through `warn`
// (once per label per process) and compile with `fallback` instead — unless `strict`, in which case the error
// propagates. CompileBudgetExceeded and MIL errors always propagate: they are not the ANE's
// inability to run one kernel.
std::unique_ptr<Kernel> compile_with_fallback(const std::string& label, const CompileFn& primary,
                                              const CompileFn& fallback, bool strict, const WarnFn& warn);

}  // namespace anetrain::backend::ane
