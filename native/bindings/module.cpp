// The one pybind11 module: anetrain._native. Every try/catch and every Python type lives in the
// bindings (native/bindings/, one file per area); the native rooms (core, mil, backend, train)
// expose plain C++ and throw std exceptions.
#include <pybind11/pybind11.h>

#include "bindings/modules.h"

PYBIND11_MODULE(_native, m) {
    using namespace anetrain::bindings;
    m.doc() = "anetrain native core (fp16, BLAS, MIL, backends, training step, generation)";
    init_core(m);
    init_mil(m);
    init_backend(m);
    init_ane(m);
    init_model(m);
    init_trainer(m);
    init_decoder(m);
    init_ane_rules(m);
    init_ane_runtime(m);
}
