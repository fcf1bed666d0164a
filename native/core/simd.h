// ANETRAIN_HOT marks a hot float loop for function multiversioning: on Linux x86-64 with GCC the
// function is compiled three times (x86-64 baseline, AVX2+FMA, AVX-512) and the loader picks the
// widest the CPU has. The baseline build targets any x86-64, where its SSE2 code runs such loops
// several times slower than AVX2. Elsewhere (macOS/Arm, where NEON is the baseline; clang) it expands to
// nothing. The build sets -ffp-contract=off, so every version rounds alike: results do not
// depend on which one runs.
#pragma once

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define ANETRAIN_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ANETRAIN_HOT
#endif
