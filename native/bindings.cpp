// The one pybind11 module: anetrain._native. Every try/catch and every Python type lives here;
// the native rooms below expose plain C++ and throw std exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <tuple>
#include <string>

#include "backend/ane/ane_backend.h"
#include "backend/ane/dialect.h"
#include "backend/ane/policy.h"
#include "backend/ane/runtime.h"
#include "backend/ane/surfaces.h"
#include "core/blas.h"
#include "core/fp16.h"
#include "core/threads.h"

namespace py = pybind11;
using namespace anetrain;

namespace {

// ---------------------------------------------------------------- core: fp16, BLAS, threads

template <class T>
T* writable_ptr(py::array& a, const char* what) {
    if (!(a.flags() & py::array::c_style) || !a.writeable())
        throw py::value_error(std::string(what) + " must be a writable C-contiguous array");
    return static_cast<T*>(a.mutable_data());
}
template <class T>
const T* readable_ptr(const py::array& a, const char* what) {
    if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(what) + " must be C-contiguous");
    return static_cast<const T*>(a.data());
}

void check_sizes(const py::array& a, const py::array& b) {
    if (a.size() != b.size())
        throw py::value_error("size mismatch: source has " + std::to_string(a.size()) + " elements, destination " +
                              std::to_string(b.size()));
}

void bind_core(py::module_& m) {
    m.def(
        "fp16_encode",
        [](const py::array& src, py::array& dst) {
            check_sizes(src, dst);
            const float* s = readable_ptr<float>(src, "source");
            uint16_t* d = writable_ptr<uint16_t>(dst, "destination");
            size_t n = size_t(src.size());
            py::gil_scoped_release nogil;
            fp16::f32_to_f16(s, d, n);
        },
        "Convert a C-contiguous float32 buffer into a same-sized 16-bit buffer (IEEE half, RNE).");
    m.def(
        "fp16_decode",
        [](const py::array& src, py::array& dst) {
            check_sizes(src, dst);
            const uint16_t* s = readable_ptr<uint16_t>(src, "source");
            float* d = writable_ptr<float>(dst, "destination");
            size_t n = size_t(src.size());
            py::gil_scoped_release nogil;
            fp16::f16_to_f32(s, d, n);
        },
        "Convert a C-contiguous 16-bit half buffer into a same-sized float32 buffer.");
    m.def(
        "fp16_round",
        [](const py::array& src, py::array& dst) {
            check_sizes(src, dst);
            const float* s = readable_ptr<float>(src, "source");
            float* d = writable_ptr<float>(dst, "destination");
            size_t n = size_t(src.size());
            py::gil_scoped_release nogil;
            fp16::round_f32(s, d, n);
        },
        "Round float32 values to the nearest half, keeping float32 storage.");
    m.def("fp16_paths", &fp16::available_paths, "fp16 kernel sets this CPU can run.");
    m.def("fp16_path", [] { return std::string(fp16::active().name); }, "The fp16 kernel set in use.");
    m.def("fp16_set_path", &fp16::set_path, py::arg("name"), "Choose the fp16 kernel set ('auto' = fastest).");

    m.def(
        "sgemm",
        [](const py::array& a, const py::array& b, bool trans_a, bool trans_b) {
            if (a.ndim() != 2 || b.ndim() != 2) throw py::value_error("sgemm takes 2-D arrays");
            int M = int(trans_a ? a.shape(1) : a.shape(0)), K = int(trans_a ? a.shape(0) : a.shape(1));
            int Kb = int(trans_b ? b.shape(1) : b.shape(0)), N = int(trans_b ? b.shape(0) : b.shape(1));
            if (K != Kb) throw py::value_error("sgemm: inner dimensions differ");
            const float* A = readable_ptr<float>(a, "a");
            const float* B = readable_ptr<float>(b, "b");
            py::array_t<float> c({M, N});
            float* C = c.mutable_data();
            int lda = int(a.shape(1)), ldb = int(b.shape(1));
            {
                py::gil_scoped_release nogil;
                blas::sgemm(trans_a, trans_b, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, N);
            }
            return c;
        },
        py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false,
        "C = op(A) @ op(B) through the BLAS shim (float32, C-contiguous inputs).");
    m.def("blas_set_threads", &blas::set_threads);
    m.def("set_num_threads", &threads::set_num_threads, "Threads used by anetrain's own CPU loops.");

    m.def("build_info", [] {
        py::dict d;
#if defined(__APPLE__)
        d["platform"] = "macos";
#elif defined(__linux__)
        d["platform"] = "linux";
#else
        d["platform"] = "other";
#endif
#if defined(__aarch64__)
        d["arch"] = "arm64";
#elif defined(__x86_64__)
        d["arch"] = "x86_64";
#else
        d["arch"] = "other";
#endif
        d["simd"] = std::string(fp16::active().name);
        d["fp16_paths"] = fp16::available_paths();
        d["blas"] = blas::library();
        d["blas_core"] = blas::core_type();
        d["blas_threads"] = blas::threads();
        d["threads"] = threads::num_threads();
        return d;
    });
}

// ---------------------------------------------------------------- mil: blobs, builder, parser
void bind_mil(py::module_& m) {
    (void)m;  // section: mil
}

// ---------------------------------------------------------------- backend: interface + ref
void bind_backend(py::module_& m) {
    (void)m;  // section: backend
}

// ---------------------------------------------------------------- ane (macOS backend, portable parts)
namespace ane_py {

namespace ane = backend::ane;

const char* env(const char* name) { return std::getenv(name); }

// ValueError for bad settings (std::invalid_argument), the backend's own error otherwise.
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

backend::DType io_dtype(const std::string& name) {
    if (name == "fp16") return backend::DType::fp16;
    if (name == "fp32") return backend::DType::fp32;
    throw py::value_error("ANE surfaces hold 'fp16' or 'fp32' tensors, got '" + name + "'");
}

// [(name, dtype, shape), ...] -> specs.
std::vector<backend::TensorSpec> specs_from(const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>& t) {
    std::vector<backend::TensorSpec> specs;
    for (const auto& [name, dtype, shape] : t) {
        backend::TensorSpec s;
        s.name = name;
        s.dtype = io_dtype(dtype);
        s.shape = shape;
        specs.push_back(std::move(s));
    }
    return specs;
}

py::tuple range_tuple(const ane::SurfaceRange& r) { return py::make_tuple(r.surface, r.offset, r.bytes); }

// The whole surface plan of a program, for tests and for the self-test's report.
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

backend::HostTensor host_tensor(py::array& a) {
    if (!(a.flags() & py::array::c_style)) throw py::value_error("arrays passed to the ANE must be C-contiguous");
    backend::HostTensor h;
    h.data = a.mutable_data();
    h.numel = int64_t(a.size());
    if (py::isinstance<py::array_t<float>>(a))
        h.dtype = backend::DType::fp32;
    else if (a.dtype().kind() == 'f' && a.itemsize() == 2)
        h.dtype = backend::DType::fp16;
    else
        throw py::value_error("arrays passed to the ANE must be float16 or float32");
    return h;
}

#if defined(__APPLE__) || defined(ANETRAIN_ANE_SYNTAX_CHECK)
// An ANE kernel compiled straight from MIL text, for scripts/selftest_ane.py and scripts/probe.py
// (the notebook API in anetrain.kernels is the general route).
struct AneProgramHandle {
    std::shared_ptr<backend::Backend> backend;
    std::unique_ptr<backend::Kernel> kernel;
    ane::AneKernel& ane() { return static_cast<ane::AneKernel&>(*kernel); }
};

// Float32 output arrays shaped like the kernel's outputs, and HostTensors over them.
std::vector<py::array_t<float>> output_arrays(const backend::Kernel& k, std::vector<backend::HostTensor>* out) {
    std::vector<py::array_t<float>> arrays;
    for (const backend::TensorSpec& s : k.outputs()) {
        arrays.emplace_back(s.shape);
        backend::HostTensor t;
        t.data = arrays.back().mutable_data();
        t.dtype = backend::DType::fp32;
        t.numel = int64_t(arrays.back().size());
        out->push_back(t);
    }
    return arrays;
}

// Write the inputs to slot 0, run `evaluate`, read the outputs: the probes' evaluation variants.
template <class Evaluate>
py::list run_on_slot0(AneProgramHandle& h, std::vector<py::array> inputs, Evaluate evaluate) {
    std::vector<backend::HostTensor> in, out;
    for (py::array& a : inputs) in.push_back(host_tensor(a));
    std::vector<py::array_t<float>> arrays = output_arrays(*h.kernel, &out);
    {
        py::gil_scoped_release nogil;
        h.ane().write_inputs(0, in);
        evaluate();
        h.ane().read_outputs(out);
    }
    py::list results;
    for (auto& a : arrays) results.append(a);
    return results;
}

py::list eval_handle(AneProgramHandle& h, std::vector<py::array> inputs) {
    std::vector<backend::HostTensor> in, out;
    for (py::array& a : inputs) in.push_back(host_tensor(a));
    std::vector<py::array_t<float>> arrays = output_arrays(*h.kernel, &out);
    {
        py::gil_scoped_release nogil;
        h.kernel->eval(in, out);
    }
    py::list results;
    for (auto& a : arrays) results.append(a);
    return results;
}

void bind_program_handle(py::module_& m) {
    py::class_<AneProgramHandle>(m, "AneProgram", "A program compiled for the ANE from MIL text (self-test and probes).")
        .def("eval", &eval_handle, py::arg("inputs"), "Evaluate slot 0; float32 outputs in return order.")
        .def_property_readonly("timings",
                               [](AneProgramHandle& h) {
                                   const ane::ProgramTimings& t = h.ane().program().timings();
                                   return py::dict(py::arg("compile_ms") = t.compile_ms, py::arg("load_ms") = t.load_ms);
                               })
        .def_property_readonly("model_dir", [](AneProgramHandle& h) { return h.ane().program().model_dir(); })
        .def_property_readonly("surface_plan", [](AneProgramHandle& h) { return surface_plan(h.ane().program().table()); })
        .def("reload", [](AneProgramHandle& h) { h.ane().program().reload(); }, "Unload and load again without compiling.")
        .def("overwrite_model_file",
             [](AneProgramHandle& h, const std::string& rel, const py::bytes& data) {
                 h.ane().program().overwrite_model_file(rel, std::string(data));
             })
        .def("eval_variant",
             [](AneProgramHandle& h, std::vector<py::array> inputs, long procedure_index, const py::bytes& weights) {
                 std::string w(weights);
                 return run_on_slot0(h, std::move(inputs), [&] { h.ane().program().evaluate_variant(procedure_index, w); });
             },
             py::arg("inputs"), py::arg("procedure_index") = 0, py::arg("weights") = py::bytes(),
             "Evaluate through a one-off request with this procedureIndex and, if given, these bytes as weightsBuffer.")
        .def("eval_with_perf_stats",
             [](AneProgramHandle& h, std::vector<py::array> inputs, unsigned mask) {
                 std::string report;
                 py::list outs = run_on_slot0(h, std::move(inputs),
                                              [&] { report = h.ane().program().evaluate_with_perf_stats(mask); });
                 return py::make_tuple(outs, report);
             },
             py::arg("inputs"), py::arg("mask") = 0xFFu, "Evaluate with perfStatsMask set; (outputs, what came back).");
    m.def("ane_process_compiles", &ane::process_compiles, "ANE compiles attempted by this process.");

    m.def(
        "ane_compile",
        [](const std::string& mil_text, const std::map<std::string, py::bytes>& weights, const std::string& label,
           std::optional<int64_t> budget, std::optional<unsigned> qos, std::optional<bool> multi_input) {
            ane::AneOptions o = settings([] { return ane::options_from_env(); });
            if (budget) o.compile_budget = *budget;
            if (qos) o.qos = *qos;
            if (multi_input) o.multi_input = *multi_input;
            backend::Blobs blobs;
            for (const auto& [k, v] : weights) blobs[k] = std::string(v);
            auto h = std::make_unique<AneProgramHandle>();
            h->backend = ane::make_ane_backend(o);
            py::gil_scoped_release nogil;
            h->kernel = h->backend->compile(mil_text, blobs, label);
            return h;
        },
        py::arg("mil_text"), py::arg("weights") = std::map<std::string, py::bytes>{}, py::arg("label") = "",
        py::arg("compile_budget") = py::none(), py::arg("qos") = py::none(), py::arg("multi_input") = py::none(),
        "Compile MIL text on the ANE with a fresh backend (options default to the environment).");
}
#endif

}  // namespace ane_py

void bind_ane(py::module_& m) {
    namespace ane = backend::ane;
    using namespace ane_py;
    m.def("ane_available", [] { return ane::platform_status().available; },
          "True when AppleNeuralEngine.framework loads and has the classes the ANE backend uses.");
    m.def("ane_unavailable_reason", [] { return ane::platform_status().reason; }, "Why the ANE is unavailable ('' if it is).");
    m.def("ane_chip", [] { return chip_dict(ane::detect_chip()); }, "Brand, model, ANE sub-type and chip family.");
    m.def("ane_dialect",
          [] { return settings([] { return dialect_dict(ane::choose_dialect(ane::detect_chip(), env("ANETRAIN_MIL_DIALECT"))); }); },
          "The MIL dialect for this machine: dict(version, opset, verbose_scalars, source).");
    m.def("ane_dialect_for",
          [](const std::string& brand, const std::optional<std::string>& override_spec) {
              ane::ChipInfo chip;
              chip.brand = brand;
              return settings([&] { return dialect_dict(ane::choose_dialect(chip, override_spec ? override_spec->c_str() : nullptr)); });
          },
          py::arg("brand"), py::arg("override") = py::none(),
          "The dialect the table gives a CPU brand string (and an ANETRAIN_MIL_DIALECT-style override).");
    m.def("ane_options",
          [] {
              ane::AneOptions o = settings([] { return ane::options_from_env(); });
              return py::dict(py::arg("compile_budget") = o.compile_budget, py::arg("qos") = o.qos,
                              py::arg("multi_input") = o.multi_input, py::arg("strict") = settings([] { return ane::strict_from_env(); }));
          },
          "The ANE settings from the environment (compile budget, QoS, multi-input, strict).");
    m.def("ane_resolve_backend",
          [](const std::string& requested) {
              const ane::PlatformStatus& st = ane::platform_status();
              return settings([&] { return ane::resolve_backend_name(requested, env("ANETRAIN_BACKEND"), st.available, st.reason); });
          },
          py::arg("requested") = "auto", "'ane' or 'ref' for a requested name ('auto', 'ane', 'ref'), honouring ANETRAIN_BACKEND.");
    m.def("ane_supports_op", &ane::ane_supports_op, py::arg("op"), py::arg("chip_family"),
          "Whether the ANE compiler of a chip family is recorded to accept an op.");
    m.def("ane_fallback_warning", &ane::fallback_warning, py::arg("label"), py::arg("message"));
    m.def(
        "ane_surface_plan",
        [](const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>& inputs,
           const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>& outputs, bool packed, size_t slots) {
            ane::SurfaceTable t(specs_from(inputs), specs_from(outputs), packed);
            for (size_t s = 1; s < slots; ++s) t.add_slot();
            return surface_plan(t);
        },
        py::arg("inputs"), py::arg("outputs"), py::arg("packed_inputs") = false, py::arg("slots") = 1,
        "Surface ids, byte sizes (used, allocated) and each tensor's (surface, offset, bytes) for a program.");
    m.def("ane_channel_offset",
          [](const std::string& dtype, const std::vector<int64_t>& shape, int64_t channel) {
              backend::TensorSpec s;
              s.dtype = io_dtype(dtype);
              s.shape = shape;
              return ane::channel_offset_bytes(s, channel);
          },
          py::arg("dtype"), py::arg("shape"), py::arg("channel"));
    m.def(
        "ane_write_tensor",
        [](const std::string& dtype, const std::vector<int64_t>& shape, py::array src, py::array_t<uint8_t> surface, size_t offset) {
            backend::TensorSpec s;
            s.name = "x";
            s.dtype = io_dtype(dtype);
            s.shape = shape;
            if (offset + ane::tensor_bytes(s) > size_t(surface.size())) throw py::value_error("the tensor does not fit the surface buffer");
            ane::write_tensor(s, host_tensor(src), surface.mutable_data() + offset);
        },
        py::arg("dtype"), py::arg("shape"), py::arg("src"), py::arg("surface"), py::arg("offset") = 0,
        "Write a host array into surface bytes as the ANE backend does (fp32 -> fp16 with RNE for fp16 tensors).");
    m.def(
        "ane_read_tensor",
        [](const std::string& dtype, const std::vector<int64_t>& shape, py::array_t<uint8_t> surface, py::array dst, size_t offset) {
            backend::TensorSpec s;
            s.name = "x";
            s.dtype = io_dtype(dtype);
            s.shape = shape;
            if (offset + ane::tensor_bytes(s) > size_t(surface.size())) throw py::value_error("the tensor does not fit the surface buffer");
            ane::read_tensor(s, surface.data() + offset, host_tensor(dst));
        },
        py::arg("dtype"), py::arg("shape"), py::arg("surface"), py::arg("dst"), py::arg("offset") = 0);
    m.def("ane_framework_classes", &ane::framework_classes, py::arg("prefix") = "_ANE");
    m.def("ane_describe_class",
          [](const std::string& name) {
              ane::ClassInfo c = ane::describe_class(name);
              return py::dict(py::arg("exists") = c.exists, py::arg("class_methods") = c.class_methods,
                              py::arg("instance_methods") = c.instance_methods, py::arg("properties") = c.properties);
          },
          py::arg("name"));
    m.def("ane_shared_event_probe", &ane::shared_event_probe);
#if defined(__APPLE__) || defined(ANETRAIN_ANE_SYNTAX_CHECK)
    bind_program_handle(m);
#endif
}

// ---------------------------------------------------------------- train: CPU ops, model, step
void bind_train(py::module_& m) {
    (void)m;  // section: train
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "anetrain native core (fp16, BLAS, MIL, backends, training step)";
    bind_core(m);
    bind_mil(m);
    bind_backend(m);
    bind_ane(m);
    bind_train(m);
}
