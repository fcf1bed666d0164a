// The areas of the anetrain._native module, one file each (native/bindings/<area>.cpp).
// module.cpp defines the module and calls each init_<area> once, in the order below.
#pragma once
#include <pybind11/pybind11.h>

namespace anetrain::bindings {

void init_core(pybind11::module_& m);         // core.cpp: fp16, BLAS, threads, buffer cache, build info
void init_mil(pybind11::module_& m);          // mil.cpp: blobs, builder, the model's kernels
void init_backend(pybind11::module_& m);      // backend.cpp: Kernel, Backend, ref and fallback, parser views
void init_ane(pybind11::module_& m);          // ane.cpp: the ANE backend (portable parts; probes on Apple)
void init_model(pybind11::module_& m);        // model.cpp: ModelConfig, CPU ops, ModelState
void init_trainer(pybind11::module_& m);      // trainer.cpp: the native training step
void init_decoder(pybind11::module_& m);      // decoder.cpp: the KV-cache decoder for generation
void init_ane_rules(pybind11::module_& m);    // ane_rules.cpp: the ANE rule checker
void init_ane_runtime(pybind11::module_& m);  // ane_runtime.cpp: model directories, cleanup, sweep

}  // namespace anetrain::bindings
