// The native training step for Python: Trainer (llama2.c's Transformer trained through MIL
// kernels on a backend).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "bindings/arrays.h"
#include "bindings/modules.h"
#include "train/cpu_ops.h"
#include "train/trainer.h"

namespace anetrain::bindings {

namespace py = pybind11;

void init_trainer(py::module_& m) {
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
        .def_property_readonly("grads_ready_ranges", &Trainer::grads_ready_ranges,
                               "[(offset, count)] of the flat gradient buffer, in the order accumulate() hands "
                               "them to grads_ready.")
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
            [tokens_arg](Trainer& t, const py::array& tokens, const Trainer::GradsReady& ready) {
                auto tok = tokens_arg(tokens, 1, t, "Trainer.accumulate");
                const int32_t* p = tok.data();
                const int batch = int(tok.shape(0));
                py::gil_scoped_release nogil;  // (pybind11 takes the GIL back to call `ready`)
                return t.accumulate(p, batch, ready);
            },
            py::arg("tokens"), py::arg("grads_ready") = nullptr,
            "Forward+backward over int32 tokens [batch, seq_len+1]; adds gradients; returns mean loss. "
            "grads_ready(offset, count), if given, is called during the last sequence's backward pass for each "
            "range of the flat gradient buffer (state.flat('grad')) that holds its final sum: norm, the layers "
            "from the last, tok_embeddings.")
        .def(
            "update",
            [](Trainer& t, float lr, float beta1, float beta2, float eps, float weight_decay, float clip,
               int sequences) {
                train::cpu::AdamW opt{lr, beta1, beta2, eps, weight_decay};
                py::gil_scoped_release nogil;
                return t.update(opt, clip, sequences);
            },
            py::arg("lr"), py::arg("beta1") = 0.9f, py::arg("beta2") = 0.95f, py::arg("eps") = 1e-8f,
            py::arg("weight_decay") = 0.1f, py::arg("clip") = 1.f, py::arg("sequences") = 0,
            "Clip and apply AdamW to the accumulated (mean, unscaled) gradients; returns the gradient norm. "
            "sequences: how many sequences the gradients sum over (0: those accumulated here; data parallel: "
            "over all ranks).")
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
        .def("compiles_after_update", &Trainer::compiles_after_update,
             "Compiles a forward() right after the next update needs (static: every layer; dynamic: 0).")
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

}  // namespace anetrain::bindings
