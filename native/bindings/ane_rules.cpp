// The ANE rule checker (backend/ane/rules.h) for Python: anetrain.ane.check_program and rules.
#include <pybind11/stl.h>

#include <stdexcept>

#include "backend/ane/rules.h"
#include "bindings/modules.h"

#include "backend/ane/checked_backend.h"

namespace py = pybind11;

namespace anetrain::bindings {

namespace {

// An unknown chip family is the caller's bad value: ValueError.
backend::ane::RuleSet rules_or_value_error(const std::string& chip_family, bool multi_io) {
    try {
        return backend::ane::rules_for(chip_family, multi_io);
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

}  // namespace

void init_ane_rules(py::module_& m) {
    m.def("ane_rule_families", &backend::ane::rule_families, "The chip families the ANE rule table knows, in order.");
    m.def(
        "ane_rules",
        [](const std::string& chip_family) {
            const backend::ane::RuleSet r = rules_or_value_error(chip_family, false);
            py::dict d;
            d["family"] = r.family;
            d["ops"] = std::vector<std::string>(r.ops.begin(), r.ops.end());
            d["dialects"] = r.dialects;
            return d;
        },
        py::arg("chip_family") = "",
        "The ANE rules of a chip family ('' = any chip): dict(family, ops (sorted), dialects (in the order to try)).");
    m.def(
        "ane_check_program",
        [](const std::string& mil_text, const std::string& chip_family, bool multi_io) {
            const backend::ane::RuleSet r = rules_or_value_error(chip_family, multi_io);
            py::gil_scoped_release nogil;
            return backend::ane::check_program(mil_text, r);
        },
        py::arg("mil_text"), py::arg("chip_family") = "", py::arg("multi_io") = false,
        "One line per ANE rule the MIL text breaks ('line N: <rule>: <what>'); [] when it conforms.");
    m.def(
        "make_rule_checked_backend",
        [](std::shared_ptr<backend::Backend> inner, const std::string& chip_family, bool multi_io) {
            return backend::ane::rule_checked(std::move(inner), rules_or_value_error(chip_family, multi_io));
        },
        py::arg("inner"), py::arg("chip_family") = "", py::arg("multi_io") = false,
        "`inner` behind the ANE rule check: a program that breaks the rules is refused (BackendError naming the "
        "rule) before `inner` sees it. The ANE backend always has it; in front of ref it makes Linux refuse what "
        "the ANE would.");
}

}  // namespace anetrain::bindings
