// The one pybind11 module: anetrain._native. Every try/catch and every Python type lives here;
// the native rooms below expose plain C++ and throw std exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>

#include "core/blas.h"
#include "core/fp16.h"
#include "core/threads.h"
#include "mil/blob.h"
#include "mil/builder.h"
#include "mil/kernels.h"

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
        [](const std::vector<std::pair<std::string, py::buffer>>& items) {
            std::vector<mil::blob::Entry> entries;
            std::vector<py::buffer_info> keep;
            for (const auto& [dtype, buf] : items) {
                keep.push_back(buf.request());
                const auto& bi = keep.back();
                entries.push_back({dtype_arg(dtype), bi.ptr, size_t(bi.size * bi.itemsize)});
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

    // One of the model's per-layer kernels: (text, {blob path: bytes}, input names, output names).
    m.def(
        "model_kernel",
        [](const std::string& name, const py::dict& shape, const std::string& pipeline, const std::string& dtype,
           const std::string& dialect, const py::object& weights) {
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
            std::vector<py::array_t<float, py::array::c_style | py::array::forcecast>> keep;
            mil::LayerWeights w;
            const bool baked = !weights.is_none();
            if (baked) {
                const py::dict wd = weights.cast<py::dict>();
                auto take = [&](const char* key) -> const float* {
                    if (!wd.contains(key)) throw py::value_error(std::string("model_kernel: weights lack '") + key + "'");
                    keep.push_back(wd[key].cast<py::array_t<float, py::array::c_style | py::array::forcecast>>());
                    return keep.back().data();
                };
                keep.reserve(7);
                w.wq = take("wq"), w.wk = take("wk"), w.wv = take("wv"), w.wo = take("wo");
                w.w1 = take("w1"), w.w2 = take("w2"), w.w3 = take("w3");
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
            return py::make_tuple(src.text, blobs, src.inputs, src.outputs);
        },
        py::arg("name"), py::arg("shape"), py::arg("pipeline") = "static", py::arg("dtype") = "fp16",
        py::arg("dialect") = "1.3/ios18", py::arg("weights") = py::none());
    m.def("model_kernel_names", &mil::layer_kernel_names);
}

// ---------------------------------------------------------------- backend: interface + ref
void bind_backend(py::module_& m) {
    (void)m;  // section: backend
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
