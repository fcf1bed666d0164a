// train for Python: the model's hyper-parameters (ModelConfig), the CPU ops of the training step
// one by one, and the model state (weights, gradients, AdamW moments) by llama2.c name.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "bindings/arrays.h"
#include "bindings/modules.h"
#include "train/config.h"
#include "train/cpu_ops.h"
#include "train/model.h"

namespace anetrain::bindings {

namespace py = pybind11;

void init_model(py::module_& m) {
    // Arguments are NumPy arrays used in place (bindings/arrays.h).
    auto extent = [](const py::array& a, int i) { return int(a.shape(i)); };
    using Floats = py::array_t<float>;

    py::class_<train::ModelConfig>(m, "ModelConfig",
                                   "llama2.c Transformer hyper-parameters and Qwen3's (n_kv_heads, hidden_dim, head_dim: 0 = default).")
        .def(py::init([](int dim, int n_layers, int n_heads, int n_kv_heads, int vocab_size, int hidden_dim,
                         int seq_len, float norm_eps, float rope_theta, int head_dim, bool qk_norm,
                         bool tie_embeddings) {
                 train::ModelConfig c{dim,      n_layers,   n_heads,  n_kv_heads, vocab_size,    hidden_dim,
                                      seq_len,  norm_eps,   rope_theta, head_dim, qk_norm,       tie_embeddings};
                 c.validate();
                 return c;
             }),
             py::arg("dim"), py::arg("n_layers"), py::arg("n_heads"), py::arg("n_kv_heads") = 0,
             py::arg("vocab_size"), py::arg("hidden_dim") = 0, py::arg("seq_len"), py::arg("norm_eps") = 1e-5f,
             py::arg("rope_theta") = 10000.f, py::arg("head_dim") = 0, py::arg("qk_norm") = false,
             py::arg("tie_embeddings") = true)
        .def_readonly("dim", &train::ModelConfig::dim)
        .def_readonly("n_layers", &train::ModelConfig::n_layers)
        .def_readonly("n_heads", &train::ModelConfig::n_heads)
        .def_property_readonly("n_kv_heads", &train::ModelConfig::kv_heads)
        .def_readonly("vocab_size", &train::ModelConfig::vocab_size)
        .def_property_readonly("hidden_dim", &train::ModelConfig::ffn_dim)
        .def_readonly("seq_len", &train::ModelConfig::seq_len)
        .def_readonly("norm_eps", &train::ModelConfig::norm_eps)
        .def_readonly("rope_theta", &train::ModelConfig::rope_theta)
        .def_property_readonly("head_dim", &train::ModelConfig::head_size)
        .def_property_readonly("q_dim", &train::ModelConfig::q_dim)
        .def_property_readonly("kv_dim", &train::ModelConfig::kv_dim)
        .def_readonly("qk_norm", &train::ModelConfig::qk_norm)
        .def_readonly("tie_embeddings", &train::ModelConfig::tie_embeddings)
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
                   ", seq_len=" + std::to_string(c.seq_len) + ", head_dim=" + std::to_string(c.head_size()) +
                   ", qk_norm=" + (c.qk_norm ? "True" : "False") +
                   ", tie_embeddings=" + (c.tie_embeddings ? "True" : "False") + ")";
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
    m.def("cpu_clip_scale", &train::cpu::clip_scale, py::arg("norm"), py::arg("max_norm"),
          "min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_.");
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

}  // namespace anetrain::bindings
