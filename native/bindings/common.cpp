// The helpers several areas of the bindings share (common.h).
#include "bindings/common.h"

#include <exception>

#include "bindings/arrays.h"
#include "mil/ir.h"

namespace anetrain::bindings {

namespace py = pybind11;

namespace {

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

}  // namespace

void register_errors(py::module_& m) {
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

}

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

}  // namespace anetrain::bindings
