// The one check of a NumPy array handed to native code. Native code reads and writes an array's
// memory as a flat run of elements of one type, sized from the shapes it was told, so before it
// touches an array the binding checks that the dtype, rank, every known extent, C-contiguity and
// (for an output) writability are what that code assumes. A wrong array is the caller's mistake:
// ValueError (TypeError for a value that is not an array at all), one line naming the function,
// the argument, what was expected and what was given.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace anetrain::bindings {

namespace py = pybind11;

using Shape = std::vector<py::ssize_t>;
constexpr py::ssize_t any = -1;  // an extent the native code reads from the array itself
const std::optional<Shape> any_shape;  // any rank and extents: the code reads only size() elements

// "float64 (3, 4) non-contiguous read-only"
inline std::string describe(const py::array& a) {
    std::string t = std::string(py::str(a.dtype())) + " (";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) t += (i ? ", " : "") + std::to_string(a.shape(i));
    t += a.ndim() == 1 ? ",)" : ")";
    if (!(a.flags() & py::array::c_style)) t += " non-contiguous";
    if (!a.writeable()) t += " read-only";
    return t;
}

inline std::string shape_text(const Shape& s) {
    std::string t = "(";
    for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + (s[i] < 0 ? std::string("n") : std::to_string(s[i]));
    return t + (s.size() == 1 ? ",)" : ")");
}

// The NumPy dtypes native code can take as T; 16-bit halves come as float16 or their uint16 bits.
template <class T>
bool dtype_fits(const py::dtype& d) {
    if constexpr (std::is_same_v<T, uint16_t>) return (d.kind() == 'f' || d.kind() == 'u') && d.itemsize() == 2 && d.byteorder() != '>';
    else return d.equal(py::dtype::of<T>());  // equal, not identical: np.dtype("<f4") is float32 too
}
template <class T>
std::string dtype_text() {
    if constexpr (std::is_same_v<T, uint16_t>) return "float16";
    else return std::string(py::str(py::dtype::of<T>()));
}

// Throws unless `a` is laid out as native code will use it. dtype_ok/dtype_want: the dtype test
// and its wording; shape: exact extents (`any` for one the code reads from the array) or
// any_shape.
inline bool shape_fits(const py::array& a, const std::optional<Shape>& shape) {
    bool ok = !shape || a.ndim() == py::ssize_t(shape->size());
    for (size_t i = 0; ok && shape && i < shape->size(); ++i) ok = (*shape)[i] < 0 || a.shape(py::ssize_t(i)) == (*shape)[i];
    return ok;
}

inline void check_array(const py::array& a, const char* fn, const char* arg, bool dtype_ok, const std::string& dtype_want,
                        const std::optional<Shape>& shape, bool writable) {
    const bool shape_ok = shape_fits(a, shape);
    const bool layout_ok = (a.flags() & py::array::c_style) && (!writable || a.writeable());
    if (dtype_ok && shape_ok && layout_ok) return;
    const std::string msg = std::string(fn) + ": " + arg + " must be a " + (writable ? "writable " : "") +
                            "C-contiguous " + dtype_want + " array" + (shape ? " of shape " + shape_text(*shape) : "") +
                            "; got " + describe(a);
    throw py::value_error(msg);
}

// The data of `a` as T*: an input for const T (read only), an output otherwise (must be writable).
// E.g. checked<const float>(x, "cpu_rmsnorm_fwd", "x", {any, any}).
template <class T>
T* checked(const py::array& a, const char* fn, const char* arg, const std::optional<Shape>& shape) {
    using E = std::remove_const_t<T>;
    constexpr bool writable = !std::is_const_v<T>;
    check_array(a, fn, arg, dtype_fits<E>(a.dtype()), dtype_text<E>(), shape, writable);
    if constexpr (writable) return static_cast<T*>(const_cast<py::array&>(a).mutable_data());
    else return static_cast<T*>(a.data());
}

// A C-contiguous T copy of an array whose dtype kind is one of `kinds` (e.g. "iu": integers), for
// arguments NumPy may convert (int64 tokens, float64 weights). The shape is checked before the
// copy is made, and a broadcast view (a zero stride) is refused: its copy could claim far more
// memory than the view holds.
template <class T>
py::array_t<T> converted(const py::handle& obj, const char* fn, const char* arg, const char* kinds,
                         const std::optional<Shape>& shape, const char* kinds_text) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(fn) + ": " + arg + " must be a NumPy array of " + kinds_text + "; got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    const py::array a = py::reinterpret_borrow<py::array>(obj);
    bool broadcast = false;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) broadcast = broadcast || (a.strides(i) == 0 && a.shape(i) > 1);
    if (std::string(kinds).find(a.dtype().kind()) == std::string::npos || !shape_fits(a, shape) || broadcast)
        throw py::value_error(std::string(fn) + ": " + arg + " must be an array of " + kinds_text +
                              (shape ? " of shape " + shape_text(*shape) : "") + (broadcast ? ", not a broadcast view" : "") +
                              "; got " + describe(a));
    auto c = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(obj);
    if (!c) throw py::error_already_set();
    checked<const T>(c, fn, arg, shape);
    return c;
}

// A count or extent that must match another the native code sizes its work by.
inline void check_count(const char* fn, const char* what, int64_t given, int64_t expected) {
    if (given != expected)
        throw py::value_error(std::string(fn) + ": " + what + " must be " + std::to_string(expected) + "; got " +
                              std::to_string(given));
}

}  // namespace anetrain::bindings
