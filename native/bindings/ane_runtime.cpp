#include "bindings/modules.h"

namespace anetrain::bindings {

void init_ane_runtime(pybind11::module_& m) { (void)m; }

}  // namespace anetrain::bindings
