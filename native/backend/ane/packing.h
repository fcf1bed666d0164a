// Packing several MIL inputs into one input surface (portable C++, tested on Linux).
//
// Multi-input ANE requests have contradictory evidence (shared reference 2.8, 10.6), while one
// input carrying everything side by side is known to work. With ANETRAIN_ANE_MULTI_INPUT=0 the
// ANE backend rewrites a program whose inputs are all [1, C_i, 1, S] of one dtype and one S to
// take a single [1, sum C_i, 1, S] input, and slices each original input back out of it under
// its original name, so the rest of the program is untouched. The host side writes input i at
// the byte offset SurfaceTable gives it, which is exactly the channel offset of the slice.
#pragma once
#include <string>
#include <vector>

#include "mil/ir.h"

namespace anetrain::backend::ane {

// [1, C, 1, W] with C, W > 0: the activation layout of the ANE (shared reference 2.4).
bool is_channel_major(const mil::Type& t);

// "" when `params` can share one packed input, else one line saying why not.
std::string packing_problem(const std::vector<mil::Param>& params);

// Rewrite `f` as described above. Throws std::invalid_argument with packing_problem's message
// when the inputs cannot be packed. Returns the name of the packed input.
std::string pack_inputs(mil::Function& f);

// The text of `program` with its main function's inputs packed (what the ANE compiles).
std::string packed_program_text(const mil::Program& program);

}  // namespace anetrain::backend::ane
