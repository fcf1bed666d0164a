// Built on macOS only (the objc check script also syntax-checks it with ANETRAIN_ANE_SYNTAX_CHECK):
// it needs runtime.mm.
#if defined(__APPLE__) || defined(ANETRAIN_ANE_SYNTAX_CHECK)
#include "backend/ane/ane_backend.h"

#include <algorithm>
#include <atomic>
#include <cstdio>

#include "backend/ane/checked_backend.h"
#include "backend/ane/packing.h"
#include "mil/builder.h"

namespace anetrain::backend::ane {

namespace {

class AneBackend : public Backend {
public:
    explicit AneBackend(const AneOptions& options)
        : Backend(options.compile_budget), options_(options), family_(detect_chip().family()) {}

    std::string name() const override { return "ane"; }
    bool supports(const std::string& op) const override { return ane_supports_op(op, family_); }

protected:
    std::unique_ptr<Kernel> compile_program(const mil::Program& program, const std::string& mil_text,
                                            const Blobs& blobs, const std::string& label) override {
        const mil::Function& f = program.main();
        std::vector<TensorSpec> inputs = input_specs(f), outputs = output_specs(f);
        const bool pack = inputs.size() > 1 && !options_.multi_input;
        std::string text = mil_text;
        if (pack) text = with_packed_inputs(program, label);
        // The family's dialects in the order to try them (rules.h): a program in the first one
        // that this compiler does not take is tried in the next (M1/M2: the verbose spelling),
        // and a dialect that worked is tried first from then on.
        const std::vector<std::string> dialects = dialects_for(family_);
        const std::string own = mil::dialect_of(program.version, f).str();
        const bool alternatives = dialects.size() > 1 && own == dialects[0];
        std::vector<size_t> order{0};
        if (alternatives) {
            order.clear();
            const size_t preferred = g_preferred_dialect.load();
            order.push_back(preferred < dialects.size() ? preferred : 0);
            for (size_t i = 0; i < dialects.size(); ++i)
                if (i != order[0]) order.push_back(i);
        }
        std::string first_error;
        for (size_t i : order) {
            if (budget() >= 0 && process_compiles() >= budget())
                throw CompileBudgetExceeded("ANE compile budget of " + std::to_string(budget()) +
                                            " per process is spent (" + std::to_string(process_compiles()) +
                                            " compiles so far): checkpoint and restart the process");
            std::string attempt = text;
            if (alternatives && i != 0) {
                mil::Program p = mil::parse(text);
                mil::respell(p, mil::Dialect::from_string(dialects[i]));
                attempt = mil::print(p);
            }
            try {
                SurfaceTable table(inputs, outputs, pack);
                auto compiled = std::make_unique<Program>(attempt, blobs, std::move(table), options_.qos);
                if (alternatives && g_preferred_dialect.exchange(i) != i)
                    std::fprintf(stderr, "anetrain: the ANE compiler of this %s takes MIL %s%s%s\n",
                                 family_.empty() ? "Mac" : family_.c_str(), dialects[i].c_str(),
                                 first_error.empty() ? "" : "; it refused the other spelling: ",
                                 first_error.substr(0, first_error.find('\n')).c_str());
                return std::make_unique<AneKernel>(std::move(inputs), std::move(outputs), label, std::move(compiled));
            } catch (const CompileBudgetExceeded&) {
                throw;
            } catch (const BackendError& e) {
                if (!alternatives) throw;
                first_error += (first_error.empty() ? "" : "; ") + dialects[i] + ": " + e.what();
            }
        }
        throw BackendError("kernel '" + label + "': no MIL dialect of this chip compiled (" + first_error + ")");
    }

private:
    static std::vector<std::string> dialects_for(const std::string& family) {
        const std::vector<std::string> known = rule_families();
        return rules_for(std::find(known.begin(), known.end(), family) != known.end() ? family : "").dialects;
    }
    // Index into the family's dialects of the one this process's compiler took (there is one ANE).
    static inline std::atomic<size_t> g_preferred_dialect{0};

    static std::string with_packed_inputs(const mil::Program& program, const std::string& label) {
        std::string problem = packing_problem(program.main().inputs);
        if (!problem.empty())
            throw BackendError("kernel '" + label + "': " + problem +
                               "; with ANETRAIN_ANE_MULTI_INPUT=0 the inputs must be [1, C, 1, S] with one S to share "
                               "one surface (pack them in the generator or set ANETRAIN_ANE_MULTI_INPUT=1)");
        return packed_program_text(program);
    }

    AneOptions options_;
    std::string family_;
};

}  // namespace

std::shared_ptr<Backend> make_ane_backend(const AneOptions& options) {
    const PlatformStatus& status = platform_status();
    if (!status.available) throw BackendError("the ANE backend is unavailable: " + status.reason);
    sweep_stale_model_dirs();  // before this process adds directories of its own
    auto backend = std::make_shared<AneBackend>(options);
    // Only programs of the shape known to train reach the compiler; an unknown chip gets the
    // rules every family shares.
    const std::string family = detect_chip().family();
    const std::vector<std::string> known = rule_families();
    const bool listed = std::find(known.begin(), known.end(), family) != known.end();
    // The rules judge what the compiler gets: several inputs packed into one surface unless
    // multi-input requests are on (a program whose inputs cannot be packed is judged as given).
    AsCompiled as_compiled = [multi = options.multi_input](const mil::Program& p, const std::string& text) {
        const bool packable = p.main().inputs.size() > 1 && packing_problem(p.main().inputs).empty();
        return !multi && packable ? packed_program_text(p) : text;
    };
    return rule_checked(backend, rules_for(listed ? family : "", options.multi_input), as_compiled);
}

AneKernel::AneKernel(std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs, std::string label,
                     std::unique_ptr<Program> program)
    : program_(std::move(program)) {
    inputs_ = std::move(inputs);
    outputs_ = std::move(outputs);
    label_ = std::move(label);
    backend_name_ = "ane";
}

size_t AneKernel::add_slot() { return program_->add_slot(); }

size_t AneKernel::slots() const { return program_->table().slots(); }

void AneKernel::write_input(size_t slot, size_t i, const HostTensor& in) {
    IoTimer io{io_ms_};
    SurfaceRange r = program_->table().input(slot, i);
    Program::Mapping m = program_->map(r.surface, false);
    write_tensor(inputs_[i], in, static_cast<char*>(m.data()) + r.offset);
}

void AneKernel::write_inputs(size_t slot, const std::vector<HostTensor>& in) {
    check_host_tensors(inputs_, in, "input");
    for (size_t i = 0; i < in.size(); ++i) write_input(slot, i, in[i]);
}

void AneKernel::read_outputs(const std::vector<HostTensor>& out) {
    check_host_tensors(outputs_, out, "output");
    IoTimer io{io_ms_};
    for (size_t j = 0; j < out.size(); ++j) {
        SurfaceRange r = program_->table().output(j);
        Program::Mapping m = program_->map(r.surface, true);
        read_tensor(outputs_[j], static_cast<const char*>(m.data()) + r.offset, out[j]);
    }
}

void AneKernel::eval_slot(size_t slot, const std::vector<HostTensor>& out) {
    check_host_tensors(outputs_, out, "output");
    try {
        program_->evaluate(slot);
        read_outputs(out);
    } catch (const BackendError& e) {
        poison_outputs(out);
        throw BackendError("kernel '" + label_ + "': " + e.what());
    } catch (...) {
        poison_outputs(out);
        throw;
    }
}

void AneKernel::eval(const std::vector<HostTensor>& in, const std::vector<HostTensor>& out) {
    check_host_tensors(outputs_, out, "output");
    size_t slot = 0;
    try {
        check_host_tensors(inputs_, in, "input");
        // A buffer passed again (one packed input, weights staged in it): it keeps a slot of its
        // own, so only the columns written since its last evaluation are copied.
        if (in.size() == 1 && in[0].reuse_id != 0 && !program_->table().packed_inputs()) {
            auto it = reuse_slots_.find(in[0].reuse_id);
            const bool known = it != reuse_slots_.end();
            if (known) {
                slot = it->second;
            } else {  // slot 0 first (plain evaluations use it too), then a slot of its own
                const bool slot0_taken = std::any_of(reuse_slots_.begin(), reuse_slots_.end(),
                                                     [](const auto& kv) { return kv.second == 0; });
                slot = slot0_taken ? add_slot() : 0;
                reuse_slots_[in[0].reuse_id] = slot;
            }
            HostTensor part = in[0];
            if (!known) part.columns.clear();  // a new slot's surface holds nothing yet
            IoTimer io{io_ms_};
            SurfaceRange r = program_->table().input(slot, 0);
            Program::Mapping m = program_->map(r.surface, false);
            write_columns(inputs_[0], part, static_cast<char*>(m.data()) + r.offset);
        } else {
            // slot 0's surface no longer holds the buffer that had it: that one copies in full next time
            for (auto it = reuse_slots_.begin(); it != reuse_slots_.end();)
                it = it->second == 0 ? reuse_slots_.erase(it) : std::next(it);
            write_inputs(0, in);
        }
    } catch (...) {
        poison_outputs(out);
        throw;
    }
    eval_slot(slot, out);
}

}  // namespace anetrain::backend::ane
#endif
