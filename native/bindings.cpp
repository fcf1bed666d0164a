// The one pybind11 module: anetrain._native. Every try/catch and every Python type lives here;
// the native rooms below expose plain C++ and throw std exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>

#include "backend/backend.h"
#include "backend/ref/ref_backend.h"
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
PyObject* g_mil_error = nullptr;
PyObject* g_backend_error = nullptr;
PyObject* g_budget_error = nullptr;

void translate_backend_errors(std::exception_ptr p) {
    try {
        if (p) std::rethrow_exception(p);
    } catch (const mil::MilError& e) {
        py::object exc = py::reinterpret_steal<py::object>(PyObject_CallFunction(g_mil_error, "s", e.what()));
        if (!exc) return;  // the call set a Python error already
        exc.attr("line") = e.line();
        exc.attr("problem") = e.problem();
        PyErr_SetObject(g_mil_error, exc.ptr());
    } catch (const backend::CompileBudgetExceeded& e) {
        PyErr_SetString(g_budget_error, e.what());
    } catch (const backend::BackendError& e) {
        PyErr_SetString(g_backend_error, e.what());
    }
}

py::list spec_list(const std::vector<backend::TensorSpec>& specs) {
    py::list out;
    for (const auto& s : specs) out.append(py::make_tuple(s.name, mil::dtype_name(s.dtype), py::tuple(py::cast(s.shape))));
    return out;
}

// A numpy array as a HostTensor (C-contiguous; writable for outputs).
backend::HostTensor host_tensor(const py::array& a, bool writable, const char* what, size_t index) {
    std::string who = std::string(what) + " " + std::to_string(index);
    if (!(a.flags() & py::array::c_style)) throw py::value_error(who + " must be a C-contiguous array (use np.ascontiguousarray)");
    if (writable && !a.writeable()) throw py::value_error(who + " must be writable");
    backend::HostTensor h;
    const char kind = a.dtype().kind();
    const auto size = a.dtype().itemsize();
    if (kind == 'f' && size == 2) h.dtype = mil::DType::fp16;
    else if (kind == 'f' && size == 4) h.dtype = mil::DType::fp32;
    else if (kind == 'i' && size == 4) h.dtype = mil::DType::int32;
    else if (kind == 'i' && size == 1) h.dtype = mil::DType::int8;
    else if (kind == 'u' && size == 1) h.dtype = mil::DType::uint8;
    else if (kind == 'b') h.dtype = mil::DType::bool_;
    else throw py::value_error(who + " has unsupported dtype " + std::string(py::str(a.dtype())) + "; use float16, float32, int32, int8, uint8 or bool");
    h.data = writable ? const_cast<py::array&>(a).mutable_data() : const_cast<void*>(a.data());
    h.numel = int64_t(a.size());
    return h;
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

void bind_backend(py::module_& m) {
    g_mil_error = PyErr_NewExceptionWithDoc("anetrain._native.MilError",
                                            "A MIL program problem; .line is the source line (0: none), .problem the message.",
                                            PyExc_ValueError, nullptr);
    g_backend_error = PyErr_NewExceptionWithDoc("anetrain._native.BackendError", "A backend compile or evaluation failure.",
                                                PyExc_RuntimeError, nullptr);
    g_budget_error = PyErr_NewExceptionWithDoc("anetrain._native.CompileBudgetExceeded",
                                               "The compile budget is spent: checkpoint and restart the process.",
                                               g_backend_error, nullptr);
    m.attr("MilError") = py::handle(g_mil_error);
    m.attr("BackendError") = py::handle(g_backend_error);
    m.attr("CompileBudgetExceeded") = py::handle(g_budget_error);
    py::register_exception_translator(&translate_backend_errors);

    using backend::Backend;
    using backend::Kernel;
    py::class_<Kernel, std::shared_ptr<Kernel>>(m, "Kernel")
        .def_property_readonly("inputs", [](const Kernel& k) { return spec_list(k.inputs()); })
        .def_property_readonly("outputs", [](const Kernel& k) { return spec_list(k.outputs()); })
        .def_property_readonly("label", &Kernel::label)
        .def_property_readonly("backend_name", &Kernel::backend_name)
        .def(
            "eval",
            [](Kernel& k, const std::vector<py::array>& inputs, const std::vector<py::array>& outputs) {
                std::vector<backend::HostTensor> in, out;
                for (size_t i = 0; i < inputs.size(); ++i) in.push_back(host_tensor(inputs[i], false, "input", i));
                for (size_t i = 0; i < outputs.size(); ++i) out.push_back(host_tensor(outputs[i], true, "output", i));
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
        [](int64_t compile_budget, bool fp16_rounding) {
            backend::RefOptions o;
            o.compile_budget = compile_budget;
            o.fp16_rounding = fp16_rounding;
            return backend::make_ref_backend(o);
        },
        py::arg("compile_budget") = -1, py::arg("fp16_rounding") = true,
        "A new CPU reference backend (fp16_rounding=False: the fp32 precision mode).");
    m.def("mil_parse_summary", &parse_summary, py::arg("text"), "Parse MIL text; version, opset, inputs, outputs and op types of main.");
    m.def(
        "mil_canonical", [](const std::string& text) { return mil::print(mil::parse(text)); }, py::arg("text"),
        "The canonical text of a MIL program (print(parse(text))).");
}

// ---------------------------------------------------------------- ane (macOS backend, portable parts)
void bind_ane(py::module_& m) {
    (void)m;  // section: ane
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
