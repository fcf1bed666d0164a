// The one pybind11 module: anetrain._native. Every try/catch and every Python type lives here;
// the native rooms below expose plain C++ and throw std exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>
#include <string>

#include "backend/ane/ane_backend.h"
#include "backend/ane/dialect.h"
#include "backend/ane/packing.h"
#include "backend/ane/policy.h"
#include "backend/ane/runtime.h"
#include "backend/ane/surfaces.h"
#include "backend/backend.h"
#include "backend/fallback.h"
#include "backend/ref/ref_backend.h"
#include "bindings/arrays.h"
#include "bindings/modules.h"
#include "core/blas.h"
#include "core/buffers.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "mil/blob.h"
#include "mil/builder.h"
#include "mil/kernels.h"
#include "train/config.h"
#include "train/cpu_ops.h"
#include "train/trainer.h"
#include "train/model.h"

namespace py = pybind11;
using namespace anetrain;
using bindings::any;
using bindings::any_shape;
using bindings::checked;
using bindings::Shape;

namespace {

// ---------------------------------------------------------------- core: fp16, BLAS, threads

// A new C-contiguous array whose memory comes from the recycling buffer cache.
py::array cached_array(const py::dtype& dtype, const std::vector<py::ssize_t>& shape) {
    size_t n = 1;
    for (auto d : shape) {
        if (d < 0) throw py::value_error("cached_array: shape must have no negative extent");
        n *= size_t(d);
    }
    void* p = buffers::acquire(n * size_t(dtype.itemsize()));
    py::capsule owner(p, [](void* q) { buffers::release(q); });
    return py::array(dtype, shape, {}, p, owner);
}

void bind_core(py::module_& m) {
    m.def("cached_array", &cached_array, py::arg("dtype"), py::arg("shape"),
          "An uninitialised C-contiguous array from anetrain's recycling buffer cache.");
    m.def("buffer_cache_bytes", &buffers::cached_bytes, "Bytes of idle buffers held for reuse.");
    m.def("buffer_cache_clear", &buffers::clear, "Return every idle cached buffer to the system.");
    m.def(
        "fp16_encode",
        [](const py::array& src, py::array& dst) {
            const float* s = checked<const float>(src, "fp16_encode", "src", any_shape);
            uint16_t* d = checked<uint16_t>(dst, "fp16_encode", "dst", any_shape);
            bindings::check_count("fp16_encode", "dst.size", dst.size(), src.size());
            size_t n = size_t(src.size());
            py::gil_scoped_release nogil;
            fp16::f32_to_f16(s, d, n);
        },
        py::arg("src"), py::arg("dst"),
        "Convert a C-contiguous float32 buffer into a same-sized 16-bit buffer (IEEE half, RNE).");
    m.def(
        "fp16_decode",
        [](const py::array& src, py::array& dst) {
            const uint16_t* s = checked<const uint16_t>(src, "fp16_decode", "src", any_shape);
            float* d = checked<float>(dst, "fp16_decode", "dst", any_shape);
            bindings::check_count("fp16_decode", "dst.size", dst.size(), src.size());
            size_t n = size_t(src.size());
            py::gil_scoped_release nogil;
            fp16::f16_to_f32(s, d, n);
        },
        py::arg("src"), py::arg("dst"),
        "Convert a C-contiguous 16-bit half buffer into a same-sized float32 buffer.");
    m.def(
        "fp16_round",
        [](const py::array& src, py::array& dst) {
            const float* s = checked<const float>(src, "fp16_round", "src", any_shape);
            float* d = checked<float>(dst, "fp16_round", "dst", any_shape);
            bindings::check_count("fp16_round", "dst.size", dst.size(), src.size());
            size_t n = size_t(src.size());
            py::gil_scoped_release nogil;
            fp16::round_f32(s, d, n);
        },
        py::arg("src"), py::arg("dst"),
        "Round float32 values to the nearest half, keeping float32 storage.");
    m.def("fp16_paths", &fp16::available_paths, "fp16 kernel sets this CPU can run.");
    m.def("fp16_path", [] { return std::string(fp16::active().name); }, "The fp16 kernel set in use.");
    m.def("fp16_set_path", &fp16::set_path, py::arg("name"), "Choose the fp16 kernel set ('auto' = fastest).");

    m.def(
        "sgemm",
        [](const py::array& a, const py::array& b, bool trans_a, bool trans_b) {
            const float* A = checked<const float>(a, "sgemm", "a", Shape{any, any});
            const float* B = checked<const float>(b, "sgemm", "b", Shape{any, any});
            int M = int(trans_a ? a.shape(1) : a.shape(0)), K = int(trans_a ? a.shape(0) : a.shape(1));
            int Kb = int(trans_b ? b.shape(1) : b.shape(0)), N = int(trans_b ? b.shape(0) : b.shape(1));
            bindings::check_count("sgemm", "the inner dimension of b", Kb, K);
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
    m.def(
        "sgemm_batch",
        [](const py::array& a, const py::array& b) {
            const float* A = checked<const float>(a, "sgemm_batch", "a", Shape{any, any, any});
            const float* Bp = checked<const float>(b, "sgemm_batch", "b", Shape{a.shape(0), a.shape(2), any});
            const int B = int(a.shape(0)), M = int(a.shape(1)), K = int(a.shape(2)), N = int(b.shape(2));
            py::array_t<float> c({B, M, N});
            float* C = c.mutable_data();
            py::gil_scoped_release nogil;
            threads::parallel_for(size_t(B), 1, [&](size_t b0, size_t e0) {
                for (size_t i = b0; i < e0; ++i)
                    blas::sgemm_serial(false, false, M, N, K, 1.f, A + i * size_t(M) * K, K, Bp + i * size_t(K) * N, N,
                                       0.f, C + i * size_t(M) * N, N);
            });
            return c;
        },
        py::arg("a"), py::arg("b"),
        "C[i] = A[i] @ B[i], one product per pool thread on one BLAS thread each (float32, C-contiguous).");
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
mil::DType dtype_arg(const std::string& name) {
    mil::DType d;
    if (!mil::dtype_from_name(name, &d)) throw py::value_error("unknown MIL dtype '" + name + "'");
    return d;
}

mil::Type type_arg(const std::string& dtype, const std::vector<int64_t>& shape, bool tensor) {
    return mil::Type{dtype_arg(dtype), tensor, shape};
}

// Python operand forms (built by anetrain/mil.py): ("var", name) | ("ints", [..]) | (dtype, value)
mil::Operand operand_arg(const py::tuple& t) {
    const std::string kind = t[0].cast<std::string>();
    if (kind == "var") return mil::Operand(t[1].cast<std::string>());
    if (kind == "ints") return mil::ints(t[1].cast<std::vector<int64_t>>());
    if (kind == "string") return mil::str(t[1].cast<std::string>());
    if (kind == "bool") return mil::boolean(t[1].cast<bool>());
    if (kind == "int32") return mil::int32(t[1].cast<int64_t>());
    if (kind == "fp16") return mil::fp16(t[1].cast<double>());
    if (kind == "fp32") return mil::fp32(t[1].cast<double>());
    throw py::value_error("unknown operand kind '" + kind + "'");
}

void bind_mil(py::module_& m) {
    m.def(
        "blob_write",
        [](const std::vector<std::pair<std::string, py::array>>& items) {
            std::vector<mil::blob::Entry> entries;
            for (size_t i = 0; i < items.size(); ++i) {
                const auto& [dtype, a] = items[i];
                // The writer copies size() elements of the dtype's width from the array's memory.
                const mil::DType d = dtype_arg(dtype);
                const std::string arg = "items[" + std::to_string(i) + "]";
                bindings::check_array(a, "blob_write", arg.c_str(), a.dtype().kind() != 'O' && size_t(a.itemsize()) == mil::dtype_size(d),
                                      std::to_string(mil::dtype_size(d)) + "-byte " + dtype, any_shape, false);
                entries.push_back({d, a.data(), size_t(a.nbytes())});
            }
            std::vector<uint64_t> offsets;
            std::string file = mil::blob::write(entries, &offsets);  // std::invalid_argument -> ValueError
            return py::make_tuple(py::bytes(file), offsets);
        },
        "Write a MIL blob-storage-v2 file from (dtype, buffer) pairs; returns (bytes, record offsets).");
    m.def(
        "blob_records",
        [](const py::bytes& data) {
            std::string file = data;
            py::list out;
            for (const auto& r : mil::blob::read_all(file))
                out.append(py::dict(py::arg("offset") = r.record_offset, py::arg("dtype") = mil::dtype_name(r.dtype),
                                    py::arg("size") = r.size, py::arg("data_offset") = r.data_offset));
            return out;
        },
        "The records of a MIL blob file: offset (the BLOBFILE offset), dtype, size, data_offset.");

    py::class_<mil::Builder>(m, "MilBuilder")
        .def(py::init([](const std::string& dialect, const std::string& function) {
                 return mil::Builder(mil::Dialect::from_string(dialect), function);
             }),
             py::arg("dialect") = "1.3/ios18", py::arg("function") = "main")
        .def("input",
             [](mil::Builder& b, const std::string& name, const std::string& dtype, const std::vector<int64_t>& shape) {
                 return b.input(name, type_arg(dtype, shape, true));
             })
        .def("weight", [](mil::Builder& b, const std::string& name, const std::string& dtype,
                          const std::vector<int64_t>& shape, const std::string& path,
                          uint64_t offset) { return b.weight(name, type_arg(dtype, shape, true), path, offset); })
        .def("constant", [](mil::Builder& b, const std::string& name, const std::string& dtype,
                            const std::vector<int64_t>& shape, const std::vector<double>& values,
                            bool tensor) { return b.constant(name, type_arg(dtype, shape, tensor), values); })
        .def("op",
             [](mil::Builder& b, const std::string& out, const std::string& dtype, const std::vector<int64_t>& shape,
                bool tensor, const std::string& op_type, const std::vector<std::pair<std::string, py::tuple>>& args,
                const std::string& tuple_key, const std::vector<std::string>& tuple) {
                 mil::Args a;
                 for (const auto& [k, t] : args) a.emplace_back(k, operand_arg(t));
                 return b.op(out, type_arg(dtype, shape, tensor), op_type, a, tuple_key, mil::Tuple{tuple});
             })
        .def("output", &mil::Builder::output)
        .def("text", &mil::Builder::text)
        .def_property_readonly("dialect", [](const mil::Builder& b) { return b.dialect().str(); });

    // One of the model's per-layer kernels: (text, {blob path: bytes}, input names, output names,
    // input layout, output layout), a layout being [(tensor, channel, column, channels, columns)]
    // for ANE-shaped programs and [] for split ones.
    m.def(
        "model_kernel",
        [](const std::string& name, const py::dict& shape, const std::string& pipeline, const std::string& dtype,
           const std::string& dialect, const py::object& weights, bool probs_tap, bool ane_shaped) {
            mil::KernelShape s;
            s.dim = shape["dim"].cast<int>();
            s.hidden = shape["hidden_dim"].cast<int>();
            s.n_heads = shape["n_heads"].cast<int>();
            s.n_kv_heads = shape["n_kv_heads"].cast<int>();
            s.seq = shape["seq_len"].cast<int>();
            if (shape.contains("rope_theta")) s.rope_theta = shape["rope_theta"].cast<double>();
            mil::KernelOptions o;
            o.pipeline = mil::pipeline_from_string(pipeline);
            o.dtype = dtype_arg(dtype);
            o.dialect = mil::Dialect::from_string(dialect);
            o.probs_tap = probs_tap;
            o.ane_shaped = ane_shaped;
            s.validate();
            std::vector<py::array_t<float>> keep;
            mil::LayerWeights w;
            const bool baked = !weights.is_none();
            if (baked) {
                if (!py::isinstance<py::dict>(weights))
                    throw py::type_error("model_kernel: weights must be a dict of arrays or None");
                const py::dict wd = weights.cast<py::dict>();
                // Each weight must be exactly [out, in]: the generator reads out*in floats from it.
                auto take = [&](const char* key, int64_t out, int64_t in) -> const float* {
                    if (!wd.contains(key)) throw py::value_error(std::string("model_kernel: weights lack '") + key + "'");
                    keep.push_back(bindings::converted<float>(wd[key], "model_kernel", ("weights['" + std::string(key) + "']").c_str(), "f",
                                                              Shape{out, in}, "floats"));
                    return keep.back().data();
                };
                keep.reserve(7);
                const int64_t D = s.dim, QD = s.q_dim(), KD = s.kv_dim(), H = s.hidden;
                w.wq = take("wq", QD, D), w.wk = take("wk", KD, D), w.wv = take("wv", KD, D), w.wo = take("wo", D, QD);
                w.w1 = take("w1", H, D), w.w2 = take("w2", D, H), w.w3 = take("w3", H, D);
            }
            using Gen = mil::KernelSource (*)(const mil::KernelShape&, const mil::KernelOptions&, const mil::LayerWeights*);
            static const std::map<std::string, Gen> gens{{"attention_forward", &mil::attention_forward},
                                                         {"ffn_forward", &mil::ffn_forward},
                                                         {"ffn_backward", &mil::ffn_backward},
                                                         {"attention_backward", &mil::attention_backward}};
            auto it = gens.find(name);
            if (it == gens.end()) throw py::value_error("unknown model kernel '" + name + "'");
            mil::KernelSource src = it->second(s, o, baked ? &w : nullptr);
            py::dict blobs;
            for (const auto& [path, bytes] : src.blobs) blobs[py::str(path)] = py::bytes(bytes);
            auto layout = [](const std::vector<mil::Block>& blocks) {
                py::list l;
                for (const mil::Block& b : blocks) l.append(py::make_tuple(b.name, b.channel, b.column, b.channels, b.columns));
                return l;
            };
            return py::make_tuple(src.text, blobs, src.inputs, src.outputs, layout(src.input_layout),
                                  layout(src.output_layout));
        },
        py::arg("name"), py::arg("shape"), py::arg("pipeline") = "static", py::arg("dtype") = "fp16",
        py::arg("dialect") = "1.3/ios18", py::arg("weights") = py::none(), py::arg("probs_tap") = false,
        py::arg("ane_shaped") = false);
    m.def("model_kernel_names", &mil::layer_kernel_names);
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

// A numpy array as a HostTensor: any dtype a MIL tensor can have, C-contiguous, writable for
// outputs. Its element count is the backend's to check against the kernel's tensor.
backend::HostTensor host_tensor(const py::array& a, bool writable, const char* fn, const std::string& arg) {
    backend::HostTensor h;
    const char kind = a.dtype().kind();
    const auto size = a.dtype().itemsize();
    bool known = true;
    if (kind == 'f' && size == 2) h.dtype = mil::DType::fp16;
    else if (kind == 'f' && size == 4) h.dtype = mil::DType::fp32;
    else if (kind == 'i' && size == 4) h.dtype = mil::DType::int32;
    else if (kind == 'i' && size == 1) h.dtype = mil::DType::int8;
    else if (kind == 'u' && size == 1) h.dtype = mil::DType::uint8;
    else if (kind == 'b') h.dtype = mil::DType::bool_;
    else known = false;
    bindings::check_array(a, fn, arg.c_str(), known && a.dtype().byteorder() != '>',
                          "float16, float32, int32, int8, uint8 or bool", any_shape, writable);
    h.data = writable ? const_cast<py::array&>(a).mutable_data() : const_cast<void*>(a.data());
    h.numel = int64_t(a.size());
    return h;
}

// Every array of a list, as host tensors named "<what>[i]".
std::vector<backend::HostTensor> host_tensors(const std::vector<py::array>& arrays, bool writable, const char* fn,
                                              const char* what) {
    std::vector<backend::HostTensor> out;
    for (size_t i = 0; i < arrays.size(); ++i)
        out.push_back(host_tensor(arrays[i], writable, fn, std::string(what) + "[" + std::to_string(i) + "]"));
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

// ---------------------------------------------------------------- ane (macOS backend, portable parts)
namespace ane_py {

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

}  // namespace ane_py

void bind_ane(py::module_& m) {
    namespace ane = backend::ane;
    using namespace ane_py;
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

// ---------------------------------------------------------------- train: CPU ops, model, step
void bind_train(py::module_& m) {
    // Arguments are NumPy arrays used in place (bindings/arrays.h).
    auto extent = [](const py::array& a, int i) { return int(a.shape(i)); };
    using Floats = py::array_t<float>;

    py::class_<train::ModelConfig>(m, "ModelConfig",
                                   "llama2.c Transformer hyper-parameters (n_kv_heads, hidden_dim: 0 = default).")
        .def(py::init([](int dim, int n_layers, int n_heads, int n_kv_heads, int vocab_size, int hidden_dim,
                         int seq_len, float norm_eps, float rope_theta) {
                 train::ModelConfig c{dim, n_layers, n_heads, n_kv_heads, vocab_size, hidden_dim, seq_len, norm_eps,
                                      rope_theta};
                 c.validate();
                 return c;
             }),
             py::arg("dim"), py::arg("n_layers"), py::arg("n_heads"), py::arg("n_kv_heads") = 0,
             py::arg("vocab_size"), py::arg("hidden_dim") = 0, py::arg("seq_len"), py::arg("norm_eps") = 1e-5f,
             py::arg("rope_theta") = 10000.f)
        .def_readonly("dim", &train::ModelConfig::dim)
        .def_readonly("n_layers", &train::ModelConfig::n_layers)
        .def_readonly("n_heads", &train::ModelConfig::n_heads)
        .def_property_readonly("n_kv_heads", &train::ModelConfig::kv_heads)
        .def_readonly("vocab_size", &train::ModelConfig::vocab_size)
        .def_property_readonly("hidden_dim", &train::ModelConfig::ffn_dim)
        .def_readonly("seq_len", &train::ModelConfig::seq_len)
        .def_readonly("norm_eps", &train::ModelConfig::norm_eps)
        .def_readonly("rope_theta", &train::ModelConfig::rope_theta)
        .def_property_readonly("head_dim", &train::ModelConfig::head_dim)
        .def_property_readonly("kv_dim", &train::ModelConfig::kv_dim)
        .def_property_readonly("layer_param_count", &train::ModelConfig::layer_param_count)
        .def_property_readonly("param_count", &train::ModelConfig::param_count)
        .def(
            "param_specs",
            [](const train::ModelConfig& c) {
                py::list specs;
                for (const auto& p : train::param_specs(c)) {
                    py::tuple shape =
                        p.vector ? py::tuple(py::make_tuple(p.cols)) : py::tuple(py::make_tuple(p.rows, p.cols));
                    specs.append(py::make_tuple(p.name, shape, p.decay));
                }
                return specs;
            },
            "[(llama2.c name, shape, weight decay applies)] in llama2.c's order.")
        .def_static("default_hidden_dim", &train::ModelConfig::default_hidden_dim, py::arg("dim"),
                    py::arg("multiple_of") = 32)
        .def("__repr__", [](const train::ModelConfig& c) {
            return "ModelConfig(dim=" + std::to_string(c.dim) + ", n_layers=" + std::to_string(c.n_layers) +
                   ", n_heads=" + std::to_string(c.n_heads) + ", n_kv_heads=" + std::to_string(c.kv_heads()) +
                   ", vocab_size=" + std::to_string(c.vocab_size) + ", hidden_dim=" + std::to_string(c.ffn_dim()) +
                   ", seq_len=" + std::to_string(c.seq_len) + ")";
        });

    m.def(
        "cpu_embedding_fwd",
        [extent](const py::array& E, const py::array& tok) {
            const float* e = checked<const float>(E, "cpu_embedding_fwd", "E", Shape{any, any});
            const int vocab = extent(E, 0), D = extent(E, 1), S = int(tok.size());
            const int32_t* t = checked<const int32_t>(tok, "cpu_embedding_fwd", "tokens", Shape{any});
            Floats x({D, S});
            float* px = x.mutable_data();
            py::gil_scoped_release nogil;
            train::cpu::embedding_fwd(e, vocab, D, t, S, px);
            return x;
        },
        py::arg("E"), py::arg("tokens"), "x[extent, S] = E[tokens].T (int32 tokens, bounds-checked).");
    m.def(
        "cpu_embedding_bwd",
        [extent](const py::array& dx, const py::array& tok, py::array& dE) {
            float* pdE = checked<float>(dE, "cpu_embedding_bwd", "dE", Shape{any, any});
            const int vocab = extent(dE, 0), D = extent(dE, 1), S = int(tok.size());
            const float* pdx = checked<const float>(dx, "cpu_embedding_bwd", "dx", Shape{D, S});
            const int32_t* t = checked<const int32_t>(tok, "cpu_embedding_bwd", "tokens", Shape{S});
            py::gil_scoped_release nogil;
            train::cpu::embedding_bwd(pdx, t, S, vocab, D, pdE);
        },
        py::arg("dx"), py::arg("tokens"), py::arg("dE"), "dE[tokens[s]] += dx[:, s] (accumulates into dE).");

    m.def(
        "cpu_rmsnorm_fwd",
        [extent](const py::array& x, const py::array& g, float eps) {
            const float* px = checked<const float>(x, "cpu_rmsnorm_fwd", "x", Shape{any, any});
            const int C = extent(x, 0), S = extent(x, 1);
            const float* pg = checked<const float>(g, "cpu_rmsnorm_fwd", "gamma", Shape{C});
            Floats y({C, S}), rrms(std::vector<py::ssize_t>{S});
            float *py_ = y.mutable_data(), *pr = rrms.mutable_data();
            {
                py::gil_scoped_release nogil;
                train::cpu::rmsnorm_fwd(px, pg, C, S, eps, py_, pr);
            }
            return py::make_tuple(y, rrms);
        },
        py::arg("x"), py::arg("gamma"), py::arg("eps") = 1e-5f, "(y[C, S], rrms[S]): RMSNorm over channels.");
    m.def(
        "cpu_rmsnorm_bwd",
        [extent](const py::array& dy, const py::array& x, const py::array& g, const py::array& rrms,
                       py::array& dx, py::array& dg) {
            const float* px = checked<const float>(x, "cpu_rmsnorm_bwd", "x", Shape{any, any});
            const int C = extent(x, 0), S = extent(x, 1);
            const float* pdy = checked<const float>(dy, "cpu_rmsnorm_bwd", "dy", Shape{C, S});
            const float* pg = checked<const float>(g, "cpu_rmsnorm_bwd", "gamma", Shape{C});
            const float* pr = checked<const float>(rrms, "cpu_rmsnorm_bwd", "rrms", Shape{S});
            float* pdx = checked<float>(dx, "cpu_rmsnorm_bwd", "dx", Shape{C, S});
            float* pdg = checked<float>(dg, "cpu_rmsnorm_bwd", "dgamma", Shape{C});
            py::gil_scoped_release nogil;
            train::cpu::rmsnorm_bwd(pdy, px, pg, pr, C, S, pdx, pdg);
        },
        py::arg("dy"), py::arg("x"), py::arg("gamma"), py::arg("rrms"), py::arg("dx"), py::arg("dgamma"),
        "RMSNorm backward; accumulates into dx[C, S] and dgamma[C].");

    auto rope = [extent](const char* fn, bool inverse) {
        return [extent, fn, inverse](const py::array& x, int n_heads, float theta) {
            const float* px = checked<const float>(x, fn, "x", Shape{any, any});
            const int C = extent(x, 0), S = extent(x, 1);
            if (n_heads <= 0 || C % n_heads != 0)
                throw py::value_error(std::string(fn) + ": " + std::to_string(C) +
                                      " channels do not split into n_heads=" + std::to_string(n_heads) + " heads");
            Floats y({C, S});
            float* p = y.mutable_data();
            std::memcpy(p, px, size_t(C) * S * sizeof(float));
            py::gil_scoped_release nogil;
            train::cpu::RopeTable table(C / n_heads, S, theta);
            (inverse ? train::cpu::rope_bwd : train::cpu::rope_fwd)(p, n_heads, table);
            return y;
        };
    };
    m.def("cpu_rope_fwd", rope("cpu_rope_fwd", false), py::arg("x"), py::arg("n_heads"), py::arg("theta") = 10000.f,
          "RoPE on adjacent channel pairs of each head of x[n_heads*hd, S], positions 0..S-1 (returns a copy).");
    m.def("cpu_rope_bwd", rope("cpu_rope_bwd", true), py::arg("dx"), py::arg("n_heads"), py::arg("theta") = 10000.f,
          "Inverse RoPE rotation (the gradient of cpu_rope_fwd; returns a copy).");

    m.def(
        "cpu_classifier_fwd",
        [extent](const py::array& E, const py::array& x) {
            const float* pE = checked<const float>(E, "cpu_classifier_fwd", "E", Shape{any, any});
            const int vocab = extent(E, 0), D = extent(E, 1);
            const float* px = checked<const float>(x, "cpu_classifier_fwd", "x", Shape{D, any});
            const int S = extent(x, 1);
            Floats logits({vocab, S});
            float* pl = logits.mutable_data();
            py::gil_scoped_release nogil;
            train::cpu::classifier_fwd(pE, px, vocab, D, S, pl);
            return logits;
        },
        py::arg("E"), py::arg("x"), "logits[vocab, S] = E @ x.");
    m.def(
        "cpu_classifier_bwd",
        [extent](const py::array& E, const py::array& x, const py::array& dlogits, py::array& dE) {
            const float* pE = checked<const float>(E, "cpu_classifier_bwd", "E", Shape{any, any});
            const int vocab = extent(E, 0), D = extent(E, 1);
            const float* px = checked<const float>(x, "cpu_classifier_bwd", "x", Shape{D, any});
            const int S = extent(x, 1);
            const float* pdl = checked<const float>(dlogits, "cpu_classifier_bwd", "dlogits", Shape{vocab, S});
            float* pdE = checked<float>(dE, "cpu_classifier_bwd", "dE", Shape{vocab, D});
            Floats dx({D, S});
            float* pdx = dx.mutable_data();
            py::gil_scoped_release nogil;
            train::cpu::classifier_bwd(pE, px, pdl, vocab, D, S, pdx, pdE);
            return dx;
        },
        py::arg("E"), py::arg("x"), py::arg("dlogits"), py::arg("dE"),
        "Returns dx = E.T @ dlogits; accumulates dE += dlogits @ x.T.");
    m.def(
        "cpu_classifier_loss",
        [extent](const py::array& E, const py::array& x, const py::array& targets, float scale,
                                  py::array& dE) {
            const float* pE = checked<const float>(E, "cpu_classifier_loss", "E", Shape{any, any});
            const int vocab = extent(E, 0), D = extent(E, 1);
            const float* px = checked<const float>(x, "cpu_classifier_loss", "x", Shape{D, any});
            const int S = extent(x, 1);
            const int32_t* t = checked<const int32_t>(targets, "cpu_classifier_loss", "targets", Shape{S});
            float* pdE = checked<float>(dE, "cpu_classifier_loss", "dE", Shape{vocab, D});
            Floats logits({vocab, S}), dx({D, S});
            float *pl = logits.mutable_data(), *pdx = dx.mutable_data();
            double loss;
            {
                py::gil_scoped_release nogil;
                train::cpu::SoftmaxStats st;
                train::cpu::classifier_fwd(pE, px, vocab, D, S, pl, &st);
                loss = train::cpu::classifier_loss_bwd(pE, px, pl, st, t, scale, vocab, D, S, pdx, pdE);
            }
            return py::make_tuple(loss, dx, logits);
        },
        py::arg("E"), py::arg("x"), py::arg("targets"), py::arg("scale"), py::arg("dE"),
        "The trainer's fused classifier + cross-entropy: (mean loss, dx = E.T @ dlogits, dlogits), "
        "accumulating dE += dlogits @ x.T.");
    m.def(
        "cpu_cross_entropy",
        [extent](const py::array& logits, const py::array& targets, float scale) {
            const float* pl = checked<const float>(logits, "cpu_cross_entropy", "logits", Shape{any, any});
            const int vocab = extent(logits, 0), S = extent(logits, 1);
            const int32_t* t = checked<const int32_t>(targets, "cpu_cross_entropy", "targets", Shape{S});
            Floats dl({vocab, S});
            float* pdl = dl.mutable_data();
            double loss;
            {
                py::gil_scoped_release nogil;
                loss = train::cpu::cross_entropy(pl, t, vocab, S, scale, pdl);
            }
            return py::make_tuple(loss, dl);
        },
        py::arg("logits"), py::arg("targets"), py::arg("scale") = 1.f,
        "(mean loss, dlogits[vocab, S] = scale * (softmax - onehot) / S) for logits[vocab, S].");

    m.def(
        "cpu_swiglu_fwd",
        [](const py::array& h1, const py::array& h3) {
            const float* p1 = checked<const float>(h1, "cpu_swiglu_fwd", "h1", Shape{any, any});
            const float* p3 = checked<const float>(h3, "cpu_swiglu_fwd", "h3", Shape{h1.shape(0), h1.shape(1)});
            Floats gate({h1.shape(0), h1.shape(1)});
            float* pg = gate.mutable_data();
            size_t n = size_t(h1.size());
            py::gil_scoped_release nogil;
            train::cpu::swiglu_fwd(p1, p3, n, pg);
            return gate;
        },
        py::arg("h1"), py::arg("h3"), "gate = silu(h1) * h3 for [hidden, S] arrays.");
    m.def(
        "cpu_swiglu_bwd",
        [](const py::array& dgate, const py::array& h1, const py::array& h3) {
            const float* p1 = checked<const float>(h1, "cpu_swiglu_bwd", "h1", Shape{any, any});
            std::vector<py::ssize_t> shape{h1.shape(0), h1.shape(1)};
            const float* p3 = checked<const float>(h3, "cpu_swiglu_bwd", "h3", shape);
            const float* pd = checked<const float>(dgate, "cpu_swiglu_bwd", "dgate", shape);
            Floats dh1(shape), dh3(shape);
            float *o1 = dh1.mutable_data(), *o3 = dh3.mutable_data();
            size_t n = size_t(h1.size());
            {
                py::gil_scoped_release nogil;
                train::cpu::swiglu_bwd(pd, p1, p3, n, o1, o3);
            }
            return py::make_tuple(dh1, dh3);
        },
        py::arg("dgate"), py::arg("h1"), py::arg("h3"), "(dh1, dh3), the gradients of cpu_swiglu_fwd.");

    auto check_heads = [](const char* fn, int n_heads, int n_kv_heads, int kv_channels) {
        if (n_kv_heads <= 0 || n_heads <= 0 || n_heads % n_kv_heads != 0 || kv_channels % n_kv_heads != 0)
            throw py::value_error(std::string(fn) + ": need n_heads (" + std::to_string(n_heads) +
                                  ") a multiple of n_kv_heads (" + std::to_string(n_kv_heads) + ") and " +
                                  std::to_string(kv_channels) + " KV channels divisible by n_kv_heads");
    };
    m.def(
        "cpu_gqa_tile",
        [extent, check_heads](const py::array& kv, int n_heads, int n_kv_heads) {
            const float* p = checked<const float>(kv, "cpu_gqa_tile", "kv", Shape{any, any});
            const int C = extent(kv, 0), S = extent(kv, 1);
            check_heads("cpu_gqa_tile", n_heads, n_kv_heads, C);
            const int hd = C / n_kv_heads;
            Floats t({n_heads * hd, S});
            float* pt = t.mutable_data();
            py::gil_scoped_release nogil;
            train::cpu::gqa_tile(p, n_kv_heads, n_heads, hd, S, pt);
            return t;
        },
        py::arg("kv"), py::arg("n_heads"), py::arg("n_kv_heads"),
        "Repeat-interleave KV heads [n_kv_heads*hd, S] to Q heads [n_heads*hd, S].");
    m.def(
        "cpu_gqa_reduce",
        [extent, check_heads](const py::array& d, int n_heads, int n_kv_heads) {
            const float* p = checked<const float>(d, "cpu_gqa_reduce", "d_tiled", Shape{any, any});
            const int C = extent(d, 0), S = extent(d, 1);
            check_heads("cpu_gqa_reduce", n_heads, n_kv_heads, C);
            if (C % n_heads != 0)
                throw py::value_error("cpu_gqa_reduce: " + std::to_string(C) + " channels do not split into " +
                                      std::to_string(n_heads) + " heads");
            const int hd = C / n_heads;
            Floats r({n_kv_heads * hd, S});
            float* pr = r.mutable_data();
            py::gil_scoped_release nogil;
            train::cpu::gqa_reduce(p, n_kv_heads, n_heads, hd, S, pr);
            return r;
        },
        py::arg("d_tiled"), py::arg("n_heads"), py::arg("n_kv_heads"),
        "Sum each group of Q-head gradients back onto its KV head (the gradient of cpu_gqa_tile).");

    m.def(
        "cpu_grad_norm",
        [](const std::vector<py::array>& grads) {
            std::vector<std::pair<const float*, size_t>> tensors;
            for (const auto& g : grads) {
                checked<const float>(g, "cpu_grad_norm", "every gradient", any_shape);
                tensors.emplace_back(static_cast<const float*>(g.data()), size_t(g.size()));
            }
            py::gil_scoped_release nogil;
            return train::cpu::global_norm(tensors);
        },
        py::arg("grads"), "Global L2 norm over a list of float32 arrays (accumulated in double).");
    m.def("cpu_clip_scale", &train::cpu::clip_scale, py::arg("norm"), py::arg("max_norm"),
          "min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_.");
    m.def(
        "cpu_scale",
        [](py::array& x, float s) {
            checked<float>(x, "cpu_scale", "x", any_shape);
            float* p = static_cast<float*>(x.mutable_data());
            size_t n = size_t(x.size());
            py::gil_scoped_release nogil;
            train::cpu::scale(p, n, s);
        },
        py::arg("x"), py::arg("s"), "x *= s in place.");
    m.def(
        "cpu_adamw_step",
        [](py::array& w, const py::array& g, py::array& mom, py::array& var, int t, float lr, float beta1,
                     float beta2, float eps, float weight_decay, bool decay, float grad_scale) {
            std::vector<py::ssize_t> shape(w.shape(), w.shape() + w.ndim());
            checked<float>(w, "cpu_adamw_step", "w", shape);
            checked<const float>(g, "cpu_adamw_step", "grad", shape);
            checked<float>(mom, "cpu_adamw_step", "m", shape);
            checked<float>(var, "cpu_adamw_step", "v", shape);
            train::cpu::AdamW opt{lr, beta1, beta2, eps, weight_decay};
            float* pw = static_cast<float*>(w.mutable_data());
            const float* pg = static_cast<const float*>(g.data());
            float* pm = static_cast<float*>(mom.mutable_data());
            float* pv = static_cast<float*>(var.mutable_data());
            size_t n = size_t(w.size());
            py::gil_scoped_release nogil;
            train::cpu::adamw_step(pw, pg, pm, pv, n, t, opt, decay, grad_scale);
        },
        py::arg("w"), py::arg("grad"), py::arg("m"), py::arg("v"), py::arg("step"), py::arg("lr"),
        py::arg("beta1") = 0.9f, py::arg("beta2") = 0.95f, py::arg("eps") = 1e-8f, py::arg("weight_decay") = 0.1f,
        py::arg("decay") = true, py::arg("grad_scale") = 1.f,
        "One AdamW update in place on w, m, v at 1-based step (decay=False skips weight decay).");

    // ------------------------------------------------ model state: weights, grads, AdamW moments
    auto buffer = [](train::ModelState& s, const std::string& kind) -> std::vector<float>& {
        if (kind == "weight") return s.weights;
        if (kind == "grad") return s.grads;
        if (kind == "m") return s.adam_m;
        if (kind == "v") return s.adam_v;
        throw py::value_error("kind must be one of 'weight', 'grad', 'm', 'v' (got '" + kind + "')");
    };
    auto slot = [](const train::ModelState& s, const std::string& name) -> const train::ParamSlot& {
        if (const train::ParamSlot* p = s.find(name)) return *p;
        throw py::key_error("unknown parameter '" + name +
                            "'; names are llama2.c's, e.g. tok_embeddings, layers.0.attention.wq, norm");
    };
    auto llama_shape = [](const train::ParamSpec& p) {
        return p.vector ? std::vector<py::ssize_t>{py::ssize_t(p.cols)}
                        : std::vector<py::ssize_t>{py::ssize_t(p.rows), py::ssize_t(p.cols)};
    };
    py::class_<train::ModelState>(m, "ModelState",
                                  "Weights, gradients and AdamW moments of llama2.c's model, by llama2.c name.")
        .def(py::init<const train::ModelConfig&>(), py::arg("config"))
        .def_property_readonly("config", &train::ModelState::config)
        .def_property_readonly("size", &train::ModelState::size, "Elements per buffer (the parameter count).")
        .def_readwrite("step", &train::ModelState::step, "AdamW updates applied so far.")
        .def("names", [](const train::ModelState& s) {
            std::vector<std::string> names;
            for (const auto& p : s.slots()) names.push_back(p.spec.name);
            return names;
        })
        .def(
            "get",
            [buffer, slot, llama_shape](train::ModelState& s, const std::string& name, const std::string& kind) {
                const train::ParamSlot& p = slot(s, name);
                if (kind == "grad") s.materialize_grads();
                const float* src = buffer(s, kind).data() + p.offset;
                Floats a(llama_shape(p.spec));
                std::memcpy(a.mutable_data(), src, size_t(p.spec.numel()) * sizeof(float));
                return a;
            },
            py::arg("name"), py::arg("kind") = "weight", "A copy of one tensor (kind: weight, grad, m, v).")
        .def(
            "set",
            [buffer, slot, llama_shape](train::ModelState& s, const std::string& name, const py::array& a,
                                            const std::string& kind) {
                const train::ParamSlot& p = slot(s, name);
                const float* src = checked<const float>(a, "ModelState.set", name.c_str(), llama_shape(p.spec));
                if (kind == "grad") s.materialize_grads();
                if (kind == "weight") s.weights_changed();
                float* dst = buffer(s, kind).data() + p.offset;
                std::memcpy(dst, src, size_t(p.spec.numel()) * sizeof(float));
            },
            py::arg("name"), py::arg("value"), py::arg("kind") = "weight",
            "Overwrite one tensor (float32, llama2.c's shape).")
        .def(
            "flat",
            [buffer](py::object self, const std::string& kind) {
                if (kind == "grad") self.cast<train::ModelState&>().expose_grads();
                if (kind == "weight") self.cast<train::ModelState&>().expose_weights();
                std::vector<float>& b = buffer(self.cast<train::ModelState&>(), kind);
                return py::array_t<float>({py::ssize_t(b.size())}, {py::ssize_t(sizeof(float))}, b.data(), self);
            },
            py::arg("kind") = "weight",
            "A writable 1-D view (no copy) of one whole buffer, tensors in names() order; keeps the state alive.")
        .def(
            "init_random",
            [](train::ModelState& s, uint64_t seed) {
                py::gil_scoped_release nogil;
                s.init_random(seed);
            },
            py::arg("seed"), "Seeded init (fan-in normal linears, 0.02 embedding, unit gammas); clears the rest.")
        .def("zero_grads", &train::ModelState::zero_grads, py::call_guard<py::gil_scoped_release>())
        .def("grad_norm", &train::ModelState::grad_norm, py::call_guard<py::gil_scoped_release>(),
             "Global L2 norm of all gradients.")
        .def(
            "adamw_update",
            [](train::ModelState& s, float lr, float beta1, float beta2, float eps, float weight_decay,
               float grad_scale) {
                train::cpu::AdamW opt{lr, beta1, beta2, eps, weight_decay};
                py::gil_scoped_release nogil;
                s.adamw_update(opt, grad_scale);
            },
            py::arg("lr"), py::arg("beta1") = 0.9f, py::arg("beta2") = 0.95f, py::arg("eps") = 1e-8f,
            py::arg("weight_decay") = 0.1f, py::arg("grad_scale") = 1.f,
            "One AdamW update of every tensor (no decay for RMSNorm gammas) with grads times grad_scale.");
}

// ---------------------------------------------------------------- trainer: the native training step
void bind_trainer(py::module_& m) {
    using train::Trainer;
    // Token ids of any integer dtype (the ids themselves are bounds-checked by the step), copied
    // to int32 when they are not already.
    auto tokens_arg = [](const py::handle& a, int extra, const Trainer& t, const char* fn) {
        auto tok = bindings::converted<int32_t>(a, fn, "tokens", "iu", Shape{any, t.config().seq_len + extra}, "integers");
        if (tok.shape(0) < 1) throw py::value_error(std::string(fn) + ": tokens must hold at least one sequence");
        return tok;
    };
    py::class_<Trainer>(m, "Trainer", "llama2.c's Transformer trained through MIL kernels on a backend.")
        .def(py::init([](const train::ModelConfig& cfg, std::shared_ptr<backend::Backend> backend,
                         const std::string& pipeline, const std::string& precision, const std::string& dialect,
                         float loss_scale, int overlap_dw, int probs_tap, int ane_shaped) {
                 train::TrainerOptions o{pipeline, precision, dialect, loss_scale, overlap_dw, probs_tap, ane_shaped};
                 return std::make_unique<Trainer>(cfg, std::move(backend), o);
             }),
             py::arg("config"), py::arg("backend"), py::arg("pipeline") = "dynamic", py::arg("precision") = "fp16",
             py::arg("dialect") = "1.3/ios18", py::arg("loss_scale") = 256.f, py::arg("overlap_dw") = -1,
             py::arg("probs_tap") = -1, py::arg("ane_shaped") = -1)
        .def_property_readonly("state", py::overload_cast<>(&Trainer::state), py::return_value_policy::reference_internal)
        .def_property_readonly("pipeline", [](const Trainer& t) { return t.options().pipeline; })
        .def_property_readonly("precision", [](const Trainer& t) { return t.options().precision; })
        .def_property_readonly("loss_scale", [](const Trainer& t) { return t.options().loss_scale; })
        .def_property_readonly("pending_sequences", &Trainer::pending_sequences)
        .def_property_readonly("ane_shaped", &Trainer::ane_shaped, "Whether the kernels are the ANE-shaped programs.")
        .def(
            "prepare",
            [](Trainer& t) {
                py::gil_scoped_release nogil;
                t.prepare();
            },
            "Compile the kernels the next step needs now (errors surface here, before training).")
        .def(
            "placements",
            [](const Trainer& t) {
                py::list out;
                for (const auto& p : t.placements()) out.append(py::make_tuple(p.kernel, p.backend, p.reason));
                return out;
            },
            "[(kernel, backend, reason)] for the compiled kernels; reason is '' where a kernel runs where asked.")
        .def(
            "release_kernels",
            [](Trainer& t) {
                py::gil_scoped_release nogil;
                t.release_kernels();
            },
            "Free every compiled kernel (before an exec() restart); the next step compiles them again.")
        .def(
            "accumulate",
            [tokens_arg](Trainer& t, const py::array& tokens) {
                auto tok = tokens_arg(tokens, 1, t, "Trainer.accumulate");
                const int32_t* p = tok.data();
                const int batch = int(tok.shape(0));
                py::gil_scoped_release nogil;
                return t.accumulate(p, batch);
            },
            py::arg("tokens"), "Forward+backward over int32 tokens [batch, seq_len+1]; adds gradients; returns mean loss.")
        .def(
            "update",
            [](Trainer& t, float lr, float beta1, float beta2, float eps, float weight_decay, float clip) {
                train::cpu::AdamW opt{lr, beta1, beta2, eps, weight_decay};
                py::gil_scoped_release nogil;
                return t.update(opt, clip);
            },
            py::arg("lr"), py::arg("beta1") = 0.9f, py::arg("beta2") = 0.95f, py::arg("eps") = 1e-8f,
            py::arg("weight_decay") = 0.1f, py::arg("clip") = 1.f,
            "Clip and apply AdamW to the accumulated (mean, unscaled) gradients; returns the gradient norm.")
        .def(
            "forward",
            [tokens_arg](Trainer& t, const py::array& tokens) {
                auto tok = tokens_arg(tokens, 0, t, "Trainer.forward");
                const int batch = int(tok.shape(0));
                std::vector<float> logits;
                {
                    const int32_t* p = tok.data();
                    py::gil_scoped_release nogil;
                    logits = t.forward(p, batch);
                }
                py::array_t<float> out({py::ssize_t(batch), py::ssize_t(t.config().seq_len),
                                        py::ssize_t(t.config().vocab_size)});
                std::memcpy(out.mutable_data(), logits.data(), logits.size() * sizeof(float));
                return out;
            },
            py::arg("tokens"), "Logits [batch, seq_len, vocab] for int32 tokens [batch, seq_len].")
        .def("compiles_needed", &Trainer::compiles_needed,
             "Compiles the next accumulate() needs (static: every layer after an update).")
        .def("timings",
             [](const Trainer& t) {
                 const train::Timings& x = t.timings();
                 return py::dict(py::arg("kernels_ms") = x.kernels, py::arg("io_ms") = x.io, py::arg("cpu_ops_ms") = x.cpu_ops,
                                 py::arg("dw_ms") = x.dw, py::arg("dw_wait_ms") = x.dw_wait,
                                 py::arg("optimizer_ms") = x.optimizer, py::arg("compile_ms") = x.compile,
                                 py::arg("total_ms") = x.total, py::arg("compiles") = x.compiles,
                                 py::arg("kernel_evals") = x.kernel_evals);
             })
        .def("reset_timings", &Trainer::reset_timings);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "anetrain native core (fp16, BLAS, MIL, backends, training step)";
    bind_core(m);
    bind_mil(m);
    bind_backend(m);
    bind_ane(m);
    bind_train(m);
    bind_trainer(m);
    bindings::init_ane_rules(m);
    bindings::init_ane_runtime(m);
}
