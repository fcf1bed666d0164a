// The ANE backend for Python (macOS backend, portable parts): availability, settings, the dialect
// and chip tables, the surface layout and packing. The kernel probes need the real backend: they
// are Apple-only (and syntax-checked on Linux by .ci/objc_check.sh with ANETRAIN_ANE_SYNTAX_CHECK).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "backend/ane/ane_backend.h"
#include "backend/ane/dialect.h"
#include "backend/ane/packing.h"
#include "backend/ane/policy.h"
#include "backend/ane/runtime.h"
#include "backend/ane/surfaces.h"
#include "backend/backend.h"
#include "bindings/arrays.h"
#include "bindings/common.h"
#include "bindings/modules.h"
#include "mil/ir.h"

namespace anetrain::bindings {

namespace py = pybind11;

namespace {

namespace ane = backend::ane;

const char* env(const char* name) { return std::getenv(name); }

// ValueError for bad settings (std::invalid_argument).
template <class F>
auto settings(F&& f) {
    try {
        return f();
    } catch (const std::invalid_argument& e) {
        throw py::value_error(e.what());
    }
}

py::dict dialect_dict(const ane::DialectChoice& c) {
    py::dict d;
    d["version"] = c.dialect.version;
    d["opset"] = c.dialect.opset;
    d["verbose_scalars"] = c.dialect.verbose_scalars;
    d["source"] = c.source;
    return d;
}

py::dict chip_dict(const ane::ChipInfo& c) {
    py::dict d;
    d["brand"] = c.brand;
    d["model"] = c.model;
    d["ane_subtype"] = c.ane_subtype;
    d["family"] = c.family();
    return d;
}

backend::TensorSpec io_spec(const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape) {
    backend::TensorSpec s;
    s.name = name;
    if (dtype == "fp16")
        s.dtype = backend::DType::fp16;
    else if (dtype == "fp32")
        s.dtype = backend::DType::fp32;
    else
        throw py::value_error("ANE surfaces hold 'fp16' or 'fp32' tensors, got '" + dtype + "'");
    for (int64_t d : shape)
        if (d < 0) throw py::value_error("tensor shapes have no negative extent");
    s.shape = shape;
    return s;
}

using SpecTuples = std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>;

std::vector<backend::TensorSpec> specs_from(const SpecTuples& t) {
    std::vector<backend::TensorSpec> specs;
    for (const auto& [name, dtype, shape] : t) specs.push_back(io_spec(name, dtype, shape));
    return specs;
}

py::tuple range_tuple(const ane::SurfaceRange& r) { return py::make_tuple(r.surface, r.offset, r.bytes); }

// The whole surface plan of a program: every surface's (used, allocated) bytes, each tensor's
// (surface, offset, bytes) per slot, and the surfaces each slot's request binds.
py::dict surface_plan(const ane::SurfaceTable& t) {
    py::list surfaces, inputs, requests, outputs;
    for (size_t id = 0; id < t.surface_count(); ++id) surfaces.append(py::make_tuple(t.surface_bytes(id), t.surface_alloc(id)));
    for (size_t slot = 0; slot < t.slots(); ++slot) {
        py::list row;
        for (size_t i = 0; i < t.inputs().size(); ++i) row.append(range_tuple(t.input(slot, i)));
        inputs.append(row);
        requests.append(t.request_inputs(slot));
    }
    for (size_t j = 0; j < t.outputs().size(); ++j) outputs.append(range_tuple(t.output(j)));
    py::dict d;
    d["surfaces"] = surfaces;
    d["inputs"] = inputs;
    d["outputs"] = outputs;
    d["request_inputs"] = requests;
    d["request_outputs"] = t.request_outputs();
    return d;
}

// Surface bytes seen through a uint8 array, for the write/read checks: the tensor's bytes from
// `offset` must lie inside it. B: uint8_t to write the surface, const uint8_t to read it.
template <class B>
B* surface_at(const char* fn, const py::array& surface, size_t offset, const backend::TensorSpec& s) {
    B* p = checked<B>(surface, fn, "surface", any_shape);
    const size_t n = size_t(surface.size()), bytes = ane::tensor_bytes(s);
    if (offset > n || bytes > n - offset)
        throw py::value_error(std::string(fn) + ": the tensor (" + std::to_string(bytes) + " bytes at offset " +
                              std::to_string(offset) + ") does not fit the surface (" + std::to_string(n) + " bytes)");
    return p + offset;
}

#if defined(__APPLE__) || defined(ANETRAIN_ANE_SYNTAX_CHECK)
ane::AneKernel& ane_kernel(backend::Kernel& k) {
    auto* a = dynamic_cast<ane::AneKernel*>(&k);
    if (!a) throw py::type_error("kernel '" + k.label() + "' runs on the " + k.backend_name() + " backend, not the ANE");
    return *a;
}

// Write the inputs to slot 0, run `evaluate`, read the outputs: the probes' evaluation variants.
template <class Evaluate>
void run_on_slot0(ane::AneKernel& k, const std::vector<py::array>& inputs, const std::vector<py::array>& outputs,
                  Evaluate evaluate) {
    std::vector<backend::HostTensor> in = host_tensors(inputs, false, "ane kernel evaluation", "inputs");
    std::vector<backend::HostTensor> out = host_tensors(outputs, true, "ane kernel evaluation", "outputs");
    py::gil_scoped_release nogil;
    k.write_inputs(0, in);
    evaluate();
    k.read_outputs(out);
}

void bind_ane_kernel_probes(py::module_& m) {
    m.def(
        "ane_kernel_info",
        [](backend::Kernel& kernel) {
            ane::Program& p = ane_kernel(kernel).program();
            py::dict d;
            d["compile_ms"] = p.timings().compile_ms;
            d["load_ms"] = p.timings().load_ms;
            d["model_dir"] = p.model_dir();
            d["surface_plan"] = surface_plan(p.table());
            return d;
        },
        py::arg("kernel"), "Compile/load times, model directory and surface plan of an ANE kernel.");
    m.def(
        "ane_kernel_reload", [](backend::Kernel& kernel) { ane_kernel(kernel).program().reload(); }, py::arg("kernel"),
        "Unload and load an ANE kernel again without compiling (probe).");
    m.def(
        "ane_kernel_overwrite_model_file",
        [](backend::Kernel& kernel, const std::string& relative_path, const py::bytes& data) {
            ane_kernel(kernel).program().overwrite_model_file(relative_path, std::string(data));
        },
        py::arg("kernel"), py::arg("relative_path"), py::arg("data"), "Rewrite a file of the kernel's model directory (probe).");
    m.def(
        "ane_kernel_eval_variant",
        [](backend::Kernel& kernel, const std::vector<py::array>& inputs, const std::vector<py::array>& outputs,
           long procedure_index, const py::bytes& weights) {
            ane::AneKernel& k = ane_kernel(kernel);
            std::string w(weights);
            run_on_slot0(k, inputs, outputs, [&] { k.program().evaluate_variant(procedure_index, w); });
        },
        py::arg("kernel"), py::arg("inputs"), py::arg("outputs"), py::arg("procedure_index") = 0, py::arg("weights") = py::bytes(),
        "Evaluate through a one-off request with this procedureIndex and, if given, these bytes as weightsBuffer (probe).");
    m.def(
        "ane_kernel_eval_with_perf_stats",
        [](backend::Kernel& kernel, const std::vector<py::array>& inputs, const std::vector<py::array>& outputs, unsigned mask) {
            ane::AneKernel& k = ane_kernel(kernel);
            std::string report;
            run_on_slot0(k, inputs, outputs, [&] { report = k.program().evaluate_with_perf_stats(mask); });
            return report;
        },
        py::arg("kernel"), py::arg("inputs"), py::arg("outputs"), py::arg("mask") = 0xFFu,
        "Evaluate with the model's perfStatsMask set and describe what the framework returns (probe).");
}
#endif

}  // namespace

void init_ane(py::module_& m) {
    m.def("ane_available", [] { return ane::platform_status().available; },
          "True when AppleNeuralEngine.framework loads and has the classes the ANE backend uses.");
    m.def("ane_unavailable_reason", [] { return ane::platform_status().reason; }, "Why the ANE is unavailable ('' if it is).");
    m.def(
        "make_ane_backend",
        [](std::optional<int64_t> compile_budget, std::optional<unsigned> qos, std::optional<bool> multi_input) {
            ane::AneOptions o = settings([] { return ane::options_from_env(); });
            if (compile_budget) o.compile_budget = *compile_budget;
            if (qos) o.qos = *qos;
            if (multi_input) o.multi_input = *multi_input;
            return ane::make_ane_backend(o);
        },
        py::arg("compile_budget") = py::none(), py::arg("qos") = py::none(), py::arg("multi_input") = py::none(),
        "A new ANE backend; unset options come from the environment (budget 100 per process, QoS 21, packed inputs). "
        "Raises BackendError where the ANE is unavailable.");
    m.def("ane_process_compiles", &ane::process_compiles, "ANE compiles attempted by this process.");
    m.def("ane_chip", [] { return chip_dict(ane::detect_chip()); }, "Brand, model, ANE sub-type and chip family.");
    m.def("ane_dialect",
          [] { return settings([] { return dialect_dict(ane::choose_dialect(ane::detect_chip(), env("ANETRAIN_MIL_DIALECT"))); }); },
          "The MIL dialect for this machine: dict(version, opset, verbose_scalars, source).");
    m.def(
        "ane_dialect_for",
        [](const std::string& brand, const std::optional<std::string>& override_spec) {
            ane::ChipInfo chip;
            chip.brand = brand;
            return settings([&] { return dialect_dict(ane::choose_dialect(chip, override_spec ? override_spec->c_str() : nullptr)); });
        },
        py::arg("brand"), py::arg("override") = py::none(),
        "The dialect the table gives a CPU brand string (and an ANETRAIN_MIL_DIALECT-style override).");
    m.def(
        "ane_options",
        [] {
            ane::AneOptions o = settings([] { return ane::options_from_env(); });
            bool strict = settings([] { return ane::strict_from_env(); });
            return py::dict(py::arg("compile_budget") = o.compile_budget, py::arg("qos") = o.qos,
                            py::arg("multi_input") = o.multi_input, py::arg("strict") = strict);
        },
        "The ANE settings from the environment (compile budget, QoS, multi-input, strict).");
    m.def(
        "ane_resolve_backend",
        [](const std::string& requested) {
            const ane::PlatformStatus& st = ane::platform_status();
            return settings([&] { return ane::resolve_backend_name(requested, env("ANETRAIN_BACKEND"), st.available, st.reason); });
        },
        py::arg("requested") = "auto", "'ane' or 'ref' for a requested name ('auto', 'ane', 'ref'), honouring ANETRAIN_BACKEND.");
    m.def("ane_supports_op", &ane::ane_supports_op, py::arg("op"), py::arg("chip_family"),
          "Whether the ANE compiler of a chip family is recorded to accept an op.");
    m.def(
        "ane_surface_plan",
        [](const SpecTuples& inputs, const SpecTuples& outputs, bool packed, size_t slots) {
            ane::SurfaceTable t(specs_from(inputs), specs_from(outputs), packed);
            for (size_t s = 1; s < slots; ++s) t.add_slot();
            return surface_plan(t);
        },
        py::arg("inputs"), py::arg("outputs"), py::arg("packed_inputs") = false, py::arg("slots") = 1,
        "Surface ids, byte sizes (used, allocated) and each tensor's (surface, offset, bytes) for a program.");
    m.def(
        "ane_channel_offset",
        [](const std::string& dtype, const std::vector<int64_t>& shape, int64_t channel) {
            return ane::channel_offset_bytes(io_spec("x", dtype, shape), channel);
        },
        py::arg("dtype"), py::arg("shape"), py::arg("channel"));
    m.def(
        "ane_write_tensor",
        [](const std::string& dtype, const std::vector<int64_t>& shape, const py::array& src, const py::array& surface,
           size_t offset) {
            backend::TensorSpec s = io_spec("x", dtype, shape);
            ane::write_tensor(s, host_tensor(src, false, "ane_write_tensor", "src"), surface_at<uint8_t>("ane_write_tensor", surface, offset, s));
        },
        py::arg("dtype"), py::arg("shape"), py::arg("src"), py::arg("surface"), py::arg("offset") = 0,
        "Write a host array into surface bytes as the ANE backend does (fp32 -> fp16 with RNE for fp16 tensors).");
    m.def(
        "ane_write_columns",
        [](const std::string& dtype, const std::vector<int64_t>& shape, const py::array& src, const py::array& surface,
           const std::vector<std::pair<int64_t, int64_t>>& columns) {
            backend::TensorSpec s = io_spec("x", dtype, shape);
            backend::HostTensor h = host_tensor(src, false, "ane_write_columns", "src");
            h.columns = columns;
            ane::write_columns(s, h, surface_at<uint8_t>("ane_write_columns", surface, 0, s));
        },
        py::arg("dtype"), py::arg("shape"), py::arg("src"), py::arg("surface"), py::arg("columns"),
        "Write only the column ranges [begin, end) of a [1, C, 1, W] host array into surface bytes, as the ANE "
        "backend refreshes a reused input ([] = everything).");
    m.def(
        "ane_read_tensor",
        [](const std::string& dtype, const std::vector<int64_t>& shape, const py::array& surface, const py::array& dst,
           size_t offset) {
            backend::TensorSpec s = io_spec("x", dtype, shape);
            ane::read_tensor(s, surface_at<const uint8_t>("ane_read_tensor", surface, offset, s), host_tensor(dst, true, "ane_read_tensor", "dst"));
        },
        py::arg("dtype"), py::arg("shape"), py::arg("surface"), py::arg("dst"), py::arg("offset") = 0,
        "Read surface bytes laid out as the tensor into a host array (fp16 -> fp32 exactly).");
    m.def(
        "ane_packed_program",
        [](const std::string& mil_text) { return settings([&] { return ane::packed_program_text(mil::parse(mil_text)); }); },
        py::arg("mil_text"),
        "The program as the ANE backend compiles it with ANETRAIN_ANE_MULTI_INPUT=0: its [1, C_i, 1, S] inputs "
        "packed along channels into one input, each sliced back out under its own name.");
    m.def("ane_framework_classes", &ane::framework_classes, py::arg("prefix") = "_ANE");
    m.def(
        "ane_describe_class",
        [](const std::string& name) {
            ane::ClassInfo c = ane::describe_class(name);
            return py::dict(py::arg("exists") = c.exists, py::arg("class_methods") = c.class_methods,
                            py::arg("instance_methods") = c.instance_methods, py::arg("properties") = c.properties);
        },
        py::arg("name"));
    m.def("ane_shared_event_probe", &ane::shared_event_probe);
#if defined(__APPLE__) || defined(ANETRAIN_ANE_SYNTAX_CHECK)
    bind_ane_kernel_probes(m);
#endif
}

}  // namespace anetrain::bindings
