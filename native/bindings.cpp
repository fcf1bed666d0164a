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
