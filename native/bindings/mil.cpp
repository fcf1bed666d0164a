// mil for Python: blob files, the program builder and the model's per-layer kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "bindings/modules.h"
#include "mil/blob.h"
#include "mil/builder.h"
#include "mil/kernels.h"

namespace anetrain::bindings {

namespace py = pybind11;

namespace {

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

}  // namespace

void init_mil(py::module_& m) {
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
        // shape: dim, hidden_dim, n_heads, n_kv_heads, seq_len and optionally head_dim, rope_theta,
        // qk_norm, norm_eps (mil::KernelShape's defaults otherwise)
        [](const std::string& name, const py::dict& shape, const std::string& pipeline, const std::string& dtype,
           const std::string& dialect, const py::object& weights, bool probs_tap, bool ane_shaped) {
            mil::KernelShape s;
            s.dim = shape["dim"].cast<int>();
            s.hidden = shape["hidden_dim"].cast<int>();
            s.n_heads = shape["n_heads"].cast<int>();
            s.n_kv_heads = shape["n_kv_heads"].cast<int>();
            s.seq = shape["seq_len"].cast<int>();
            if (shape.contains("head_dim")) s.head_dim = shape["head_dim"].cast<int>();
            if (shape.contains("rope_theta")) s.rope_theta = shape["rope_theta"].cast<double>();
            if (shape.contains("qk_norm")) s.qk_norm = shape["qk_norm"].cast<bool>();
            if (shape.contains("norm_eps")) s.norm_eps = shape["norm_eps"].cast<double>();
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
                auto take = [&](const char* key, Shape want) -> const float* {
                    if (!wd.contains(key)) throw py::value_error(std::string("model_kernel: weights lack '") + key + "'");
                    keep.push_back(bindings::converted<float>(wd[key], "model_kernel", ("weights['" + std::string(key) + "']").c_str(), "f",
                                                              want, "floats"));
                    return keep.back().data();
                };
                keep.reserve(9);
                const int64_t D = s.dim, QD = s.q_dim(), KD = s.kv_dim(), H = s.hidden;
                w.wq = take("wq", {QD, D}), w.wk = take("wk", {KD, D}), w.wv = take("wv", {KD, D}), w.wo = take("wo", {D, QD});
                w.w1 = take("w1", {H, D}), w.w2 = take("w2", {D, H}), w.w3 = take("w3", {H, D});
                if (s.qk_norm) w.q_norm = take("q_norm", {s.head_size()}), w.k_norm = take("k_norm", {s.head_size()});
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

}  // namespace anetrain::bindings
