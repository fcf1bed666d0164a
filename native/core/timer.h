// Wall-clock accounting for the timing breakdowns (trainer phases, a kernel's I/O).
#pragma once
#include <chrono>

namespace anetrain {

using Clock = std::chrono::steady_clock;

inline double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Adds the lifetime of a scope, in milliseconds, to `acc`.
struct ScopedTimer {
    double& acc;
    Clock::time_point t0 = Clock::now();
    ~ScopedTimer() { acc += ms_since(t0); }
};

}  // namespace anetrain
