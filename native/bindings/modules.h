// Areas of the anetrain._native module that live in files of their own (native/bindings/*.cpp).
// bindings.cpp defines the module and calls each init_<area> once.
#pragma once
#include <pybind11/pybind11.h>

namespace anetrain::bindings {

void init_ane_rules(pybind11::module_& m);    // ane_rules.cpp: the ANE rule checker
void init_ane_runtime(pybind11::module_& m);  // ane_runtime.cpp: model directories, cleanup, sweep

}  // namespace anetrain::bindings
