// The bindings build as this one translation unit. Each area stays in its own file for readers
// (modules.h lists them), but every pybind11 TU pays for the library's headers and templates
// again, so compiled one by one they cost several times the compile time of this TU.
// setup.py compiles the files included here only through it; a bindings file not listed here is
// compiled on its own. Each file includes what it uses, so it still compiles alone too.
#include "bindings/common.cpp"
#include "bindings/core.cpp"
#include "bindings/mil.cpp"
#include "bindings/backend.cpp"
#include "bindings/ane.cpp"
#include "bindings/model.cpp"
#include "bindings/trainer.cpp"
#include "bindings/decoder.cpp"
#include "bindings/ane_rules.cpp"
#include "bindings/ane_runtime.cpp"
#include "bindings/module.cpp"
