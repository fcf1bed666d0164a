// backend for Python: the Kernel and Backend interface, the CPU reference backend, the fallback
// backend and the MIL parser's views of a program.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/fallback.h"
#include "backend/ref/ref_backend.h"
#include "bindings/common.h"
#include "bindings/modules.h"
#include "mil/builder.h"
#include "mil/ir.h"

namespace anetrain::bindings {

namespace py = pybind11;

namespace {

py::list spec_list(const std::vector<backend::TensorSpec>& specs) {
    py::list out;
    for (const auto& s : specs) out.append(py::make_tuple(s.name, mil::dtype_name(s.dtype), py::tuple(py::cast(s.shape))));
    return out;
}

py::dict parse_summary(const std::string& text) {
    mil::Program p = mil::parse(text);
    const mil::Function& f = p.main();
    py::dict d;
    d["version"] = p.version;
    d["opset"] = f.opset;
    d["build_info"] = p.build_info;
    d["inputs"] = spec_list(backend::input_specs(f));
    d["outputs"] = spec_list(backend::output_specs(f));
    py::list ops;
    for (const auto& op : f.ops) ops.append(op.type);
    d["ops"] = ops;
    d["functions"] = p.functions.size();
    return d;
}

}  // namespace

void init_backend(py::module_& m) {
    register_errors(m);
    using backend::Backend;
    using backend::Kernel;
    py::class_<Kernel, std::shared_ptr<Kernel>>(m, "Kernel")
        .def_property_readonly("inputs", [](const Kernel& k) { return spec_list(k.inputs()); })
        .def_property_readonly("outputs", [](const Kernel& k) { return spec_list(k.outputs()); })
        .def_property_readonly("label", &Kernel::label)
        .def_property_readonly("backend_name", &Kernel::backend_name)
        .def_property_readonly("placement_note", &Kernel::placement_note,
                               "Why the kernel runs on backend_name rather than where it was asked ('' if it does).")
        .def(
            "eval",
            [](Kernel& k, const std::vector<py::array>& inputs, const std::vector<py::array>& outputs) {
                std::vector<backend::HostTensor> in = host_tensors(inputs, false, "Kernel.eval", "inputs");
                std::vector<backend::HostTensor> out = host_tensors(outputs, true, "Kernel.eval", "outputs");
                py::gil_scoped_release nogil;
                k.eval(in, out);
            },
            py::arg("inputs"), py::arg("outputs"),
            "Evaluate into preallocated C-contiguous outputs (fp16 tensors may be passed as float32).");

    py::class_<Backend, std::shared_ptr<Backend>>(m, "Backend")
        .def_property_readonly("name", &Backend::name)
        .def_property_readonly("compiles", &Backend::compiles)
        .def_property("budget", &Backend::budget, &Backend::set_budget)
        .def_property_readonly("remaining", &Backend::remaining)
        .def("supports", &Backend::supports, py::arg("op"))
        .def(
            "compile",
            [](Backend& b, const std::string& text, const py::dict& weights, const std::string& label) {
                backend::Blobs blobs;
                for (auto item : weights) blobs[py::cast<std::string>(item.first)] = py::cast<std::string>(item.second.cast<py::bytes>());
                py::gil_scoped_release nogil;
                return std::shared_ptr<Kernel>(b.compile(text, blobs, label));
            },
            py::arg("mil_text"), py::arg("weights") = py::dict(), py::arg("label") = "",
            "Parse, check and compile MIL text; weights maps '@model_path/weights/x.bin' to file bytes.");

    m.def(
        "make_ref_backend",
        [](int64_t compile_budget, bool fp16_rounding, bool fuse) {
            backend::RefOptions o;
            o.compile_budget = compile_budget;
            o.fp16_rounding = fp16_rounding;
            o.fuse = fuse;
            return backend::make_ref_backend(o);
        },
        py::arg("compile_budget") = -1, py::arg("fp16_rounding") = true, py::arg("fuse") = true,
        "A new CPU reference backend (fp16_rounding=False: the fp32 precision mode; fuse=False: no "
        "tile-by-tile execution of element-wise chains, same results).");
    m.def(
        "make_fallback_backend",
        [](std::shared_ptr<Backend> primary, std::shared_ptr<Backend> secondary, bool strict) {
            return std::shared_ptr<Backend>(std::make_shared<backend::FallbackBackend>(primary, secondary, strict));
        },
        py::arg("primary"), py::arg("secondary"), py::arg("strict") = false,
        "A backend that compiles on primary and, for a program primary cannot run (its BackendError), on secondary; "
        "the kernel's placement_note says why. strict: no fallback.");
    m.def(
        "fallback_list",
        [](const std::shared_ptr<Backend>& b) {
            py::list out;
            if (auto* fb = dynamic_cast<backend::FallbackBackend*>(b.get()))
                for (const auto& f : fb->fallbacks()) out.append(py::make_tuple(f.label, f.reason));
            return out;
        },
        py::arg("backend"), "[(label, reason)] of every compile a fallback backend sent to its secondary ([] otherwise).");
    m.def("mil_parse_summary", &parse_summary, py::arg("text"), "Parse MIL text; version, opset, inputs, outputs and op types of main.");
    m.def(
        "mil_canonical", [](const std::string& text) { return mil::print(mil::parse(text)); }, py::arg("text"),
        "The canonical text of a MIL program (print(parse(text))).");
    m.def(
        "mil_respell",
        [](const std::string& text, const std::string& dialect) {
            mil::Program p = mil::parse(text);
            mil::respell(p, mil::Dialect::from_string(dialect));
            return mil::print(p);
        },
        py::arg("text"), py::arg("dialect"),
        "The program in another dialect (e.g. '1.0/ios16-verbose'): version, opset, buildInfo and scalar spelling.");
}

}  // namespace anetrain::bindings
