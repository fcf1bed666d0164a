// The ANE runtime seen from Python: the model directories (backend/ane/model_dirs.h), i.e. the
// registry of the framework's per-program directories, the cleanup before an exec() restart and
// the sweep of dead processes' leftovers (portable: the tests drive them on Linux with a
// temporary root of their own); and which messages the framework's classes answer.
#include <pybind11/stl.h>

#include "backend/ane/model_dirs.h"
#include "backend/ane/runtime.h"
#include "bindings/modules.h"

namespace anetrain::bindings {

namespace py = pybind11;
namespace ane = backend::ane;

void init_ane_runtime(py::module_& m) {
    m.attr("ane_model_registry_prefix") = ane::kModelRegistryPrefix;
    m.def("ane_model_registry_file", &ane::model_registry_file, py::arg("tmp_root"),
          "This process's registry file of model directories under tmp_root.");
    m.def(
        "ane_model_dirs_register",
        [](const std::string& tmp_root, const std::string& dir) {
            std::string problem = ane::register_model_dir(tmp_root, dir);
            if (!problem.empty()) throw py::value_error(problem);
        },
        py::arg("tmp_root"), py::arg("dir"),
        "One more user of a model directory (a hex-id child of tmp_root); the first one lists it in the registry.");
    m.def("ane_model_dirs_unregister", &ane::unregister_model_dir, py::arg("dir"),
          "One user fewer; the last one removes the directory. True when it was removed.");
    m.def("ane_model_dirs_remove", &ane::remove_model_dir, py::arg("dir"),
          "Remove a registered model directory now; False for paths this process did not register.");
    m.def("ane_model_dirs_users", &ane::model_dir_users, py::arg("dir"), "Programs of this process using the directory.");
    m.def("ane_model_dirs_sweep", &ane::sweep_stale, py::arg("tmp_root"),
          "Remove the model directories (and registry files) of dead processes under tmp_root; returns the paths.");
    m.def("ane_class_answers", &ane::class_answers, py::arg("class_name"), py::arg("selector"), py::arg("class_method"),
          "Whether the framework class (class_method) or its instances answer the selector, inherited ones included.");
    m.def("ane_release_models", &ane::release_all,
          "Remove every model directory this process registered and its registry files; returns the paths.");
}

}  // namespace anetrain::bindings
