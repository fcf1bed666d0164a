// train::Decoder for Python: the KV-cache decoder over weights it borrows, either NumPy arrays
// (kept alive by the decoder) or a live ModelState (kept alive likewise, read as it trains).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <memory>
#include <string>

#include "bindings/arrays.h"
#include "bindings/modules.h"
#include "train/decoder.h"
#include "train/model.h"

namespace anetrain::bindings {

namespace py = pybind11;

namespace {

struct PyDecoder {
    std::unique_ptr<train::Decoder> decoder;
    py::object owner;  // what holds the weights: the arrays, or the ModelState
};

// The decoder over a dict {llama2.c name: float32 array} ("output" optional, for a classifier of
// its own); every other key is refused, so a misspelt name cannot go unnoticed.
PyDecoder from_arrays(const train::ModelConfig& cfg, const py::dict& weights, int context) {
    cfg.validate();
    py::list held;
    std::map<std::string, const float*> found;
    auto take = [&](const std::string& name, const Shape& shape) {
        if (!weights.contains(name)) return;
        py::object a = weights[py::str(name)];
        if (!py::isinstance<py::array>(a))
            throw py::type_error("Decoder: weight '" + name + "' must be a NumPy float32 array; got " +
                                 std::string(py::str(py::type::of(a).attr("__name__"))));
        found[name] = checked<const float>(a, "Decoder", name.c_str(), shape);
        held.append(a);
    };
    for (const train::ParamSpec& p : train::param_specs(cfg))
        take(p.name, p.vector ? Shape{p.cols} : Shape{p.rows, p.cols});
    take("output", Shape{cfg.vocab_size, cfg.dim});
    for (auto item : weights) {
        const std::string key = py::str(item.first);
        if (!found.count(key))
            throw py::value_error("Decoder: unexpected weight '" + key +
                                  "'; names are llama2.c's without .weight (tok_embeddings, layers.0.attention.wq, "
                                  "..., norm, and optionally output)");
    }
    auto at = [&](const std::string& name) -> const float* {
        auto it = found.find(name);
        return it == found.end() ? nullptr : it->second;
    };
    return {std::make_unique<train::Decoder>(cfg, train::DecoderWeights::resolve(cfg, at), context), held};
}

PyDecoder from_state(const py::object& state_obj, int context) {
    const train::ModelState& s = state_obj.cast<const train::ModelState&>();
    auto at = [&](const std::string& name) -> const float* {
        const train::ParamSlot* p = s.find(name);
        return p ? s.weights.data() + p->offset : nullptr;  // the buffer never moves
    };
    return {std::make_unique<train::Decoder>(s.config(), train::DecoderWeights::resolve(s.config(), at), context),
            state_obj};
}

}  // namespace

void init_decoder(py::module_& m) {
    py::class_<PyDecoder>(m, "Decoder",
                          "llama2.c's Transformer with a key/value cache, for generation: fp32 on the CPU, weights "
                          "borrowed (NumPy arrays or a live ModelState), never copied.")
        .def(py::init(&from_arrays), py::arg("config"), py::arg("weights"), py::arg("context") = 0,
             "Over {llama2.c name: float32 array} (C-contiguous, llama2.c's shapes; 'output' for an untied "
             "classifier). context: positions the cache holds (0: config.seq_len).")
        .def(py::init(&from_state), py::arg("state"), py::arg("context") = 0,
             "Over a ModelState's live weights (a training model's).")
        .def(
            "forward",
            [](PyDecoder& d, const py::handle& tokens, bool all_positions) {
                auto tok = converted<int32_t>(tokens, "Decoder.forward", "tokens", "iu", Shape{any}, "integers");
                const int n = int(tok.shape(0));
                const int V = d.decoder->config().vocab_size;
                py::array_t<float> logits(all_positions ? Shape{n, V} : Shape{V});
                const int32_t* t = tok.data();
                float* out = logits.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    d.decoder->forward(t, n, out, all_positions);
                }
                return logits;
            },
            py::arg("tokens"), py::arg("all_positions") = false,
            "Run tokens [n] at the next n positions, caching their keys and values. Returns the logits of the last "
            "one [vocab], or of every one [n, vocab] with all_positions.")
        .def(
            "reset", [](PyDecoder& d) { d.decoder->reset(); },
            "Empty the cache (the next forward starts at position 0).")
        .def_property_readonly("position", [](const PyDecoder& d) { return d.decoder->position(); },
                               "Positions in the cache.")
        .def_property_readonly("context", [](const PyDecoder& d) { return d.decoder->context(); },
                               "Positions the cache holds.")
        .def_property_readonly("config", [](const PyDecoder& d) { return d.decoder->config(); })
        .def_property_readonly("weight_bytes", [](const PyDecoder& d) { return d.decoder->weight_bytes(); },
                               "Bytes of the borrowed fp32 weights.")
        .def_property_readonly("cache_bytes", [](const PyDecoder& d) { return d.decoder->cache_bytes(); },
                               "Bytes of the key/value cache and RoPE tables.")
        .def_property_readonly("scratch_bytes", [](const PyDecoder& d) { return d.decoder->scratch_bytes(); },
                               "Bytes of activations, sized by the longest forward so far.");
}

}  // namespace anetrain::bindings
