// What several areas of the bindings share (native/bindings/*.cpp), defined once in common.cpp:
// the Python exception types of the native errors with the one translator to them, and NumPy
// arrays seen as backend host tensors.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "backend/backend.h"

namespace anetrain::bindings {

// Adds MilError, BackendError and CompileBudgetExceeded to the module and registers the
// translator of mil::MilError, backend::CompileBudgetExceeded and backend::BackendError to them.
// Called once, by init_backend.
void register_errors(pybind11::module_& m);

// A numpy array as a HostTensor: any dtype a MIL tensor can have, C-contiguous, writable for
// outputs. Its element count is the backend's to check against the kernel's tensor.
backend::HostTensor host_tensor(const pybind11::array& a, bool writable, const char* fn, const std::string& arg);

// Every array of a list, as host tensors named "<what>[i]".
std::vector<backend::HostTensor> host_tensors(const std::vector<pybind11::array>& arrays, bool writable, const char* fn,
                                              const char* what);

}  // namespace anetrain::bindings
