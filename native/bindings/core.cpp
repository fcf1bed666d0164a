// core for Python: fp16 conversion, BLAS, threads, the recycling buffer cache and build info.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "bindings/modules.h"
#include "core/blas.h"
#include "core/buffers.h"
#include "core/fp16.h"
#include "core/threads.h"

namespace anetrain::bindings {

namespace py = pybind11;

namespace {

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

// An out= argument: the caller's array itself (a list would be copied, and the result lost).
py::array out_array(const py::object& out, const char* fn) {
    if (!py::isinstance<py::array>(out))
        throw py::type_error(std::string(fn) + ": out must be a numpy array, got " +
                             std::string(py::str(py::type::of(out).attr("__name__"))));
    return out.cast<py::array>();
}

}  // namespace

void init_core(py::module_& m) {
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
        [](const py::array& a, const py::array& b, bool trans_a, bool trans_b, const py::object& out, float alpha,
           float beta) {
            const float* A = checked<const float>(a, "sgemm", "a", Shape{any, any});
            const float* B = checked<const float>(b, "sgemm", "b", Shape{any, any});
            int M = int(trans_a ? a.shape(1) : a.shape(0)), K = int(trans_a ? a.shape(0) : a.shape(1));
            int Kb = int(trans_b ? b.shape(1) : b.shape(0)), N = int(trans_b ? b.shape(0) : b.shape(1));
            bindings::check_count("sgemm", "the inner dimension of b", Kb, K);
            if (out.is_none() && beta != 0.f) throw py::value_error("sgemm: beta needs out= (the C it scales)");
            py::array c = out.is_none() ? py::array(py::array_t<float>({M, N})) : out_array(out, "sgemm");
            float* C = checked<float>(c, "sgemm", "out", Shape{M, N});
            int lda = int(a.shape(1)), ldb = int(b.shape(1));
            {
                py::gil_scoped_release nogil;
                blas::sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, N);
            }
            return c;
        },
        py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("out") = py::none(),
        py::arg("alpha") = 1.f, py::arg("beta") = 0.f,
        "C = alpha op(A) @ op(B) + beta C through the BLAS shim (float32, C-contiguous; C is a new array, or out=).");
    m.def(
        "sgemm_batch",
        [](const py::array& a, const py::array& b, bool trans_a, bool trans_b, const py::object& out) {
            const float* A = checked<const float>(a, "sgemm_batch", "a", Shape{any, any, any});
            const int B = int(a.shape(0));
            const float* Bp = checked<const float>(b, "sgemm_batch", "b", Shape{B, any, any});
            const int M = int(trans_a ? a.shape(2) : a.shape(1)), K = int(trans_a ? a.shape(1) : a.shape(2));
            const int Kb = int(trans_b ? b.shape(2) : b.shape(1)), N = int(trans_b ? b.shape(1) : b.shape(2));
            bindings::check_count("sgemm_batch", "the inner dimension of b", Kb, K);
            py::array c = out.is_none() ? py::array(py::array_t<float>({B, M, N})) : out_array(out, "sgemm_batch");
            float* C = checked<float>(c, "sgemm_batch", "out", Shape{B, M, N});
            const int lda = int(a.shape(2)), ldb = int(b.shape(2));
            py::gil_scoped_release nogil;
            threads::parallel_for(size_t(B), 1, [&](size_t b0, size_t e0) {
                for (size_t i = b0; i < e0; ++i)
                    blas::sgemm_serial(trans_a, trans_b, M, N, K, 1.f, A + i * size_t(M) * K, lda,
                                       Bp + i * size_t(K) * N, ldb, 0.f, C + i * size_t(M) * N, N);
            });
            return c;
        },
        py::arg("a"), py::arg("b"), py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("out") = py::none(),
        "C[i] = op(A[i]) @ op(B[i]), one product per pool thread on one BLAS thread each (float32, C-contiguous; "
        "C is a new array, or out=).");
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

}  // namespace anetrain::bindings
