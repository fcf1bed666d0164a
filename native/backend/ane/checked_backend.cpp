#include "backend/ane/checked_backend.h"

namespace anetrain::backend::ane {

namespace {

class RuleCheckedBackend : public Backend {
public:
    RuleCheckedBackend(std::shared_ptr<Backend> inner, RuleSet rules, AsCompiled as_compiled)
        : Backend(-1), inner_(std::move(inner)), rules_(std::move(rules)), as_compiled_(std::move(as_compiled)) {
        if (!inner_) throw std::invalid_argument("rule_checked needs a backend");
    }
    std::string name() const override { return inner_->name(); }
    bool supports(const std::string& op) const override { return rules_.ops.count(op) && inner_->supports(op); }
    int64_t compiles() const override { return inner_->compiles(); }
    int64_t budget() const override { return inner_->budget(); }
    void set_budget(int64_t b) override { inner_->set_budget(b); }
    int64_t remaining() const override { return inner_->remaining(); }

protected:
    std::unique_ptr<Kernel> compile_program(const mil::Program& program, const std::string& mil_text,
                                            const Blobs& blobs, const std::string& label) override {
        const std::vector<std::string> violations =
            check_program(as_compiled_ ? as_compiled_(program, mil_text) : mil_text, rules_);
        if (!violations.empty()) {
            std::string msg = "kernel '" + label + "' breaks the ANE rules (docs/ane-rules.md" +
                              (rules_.family.empty() ? "" : ", chip " + rules_.family) + "): " + violations[0];
            if (violations.size() > 1) msg += " (and " + std::to_string(violations.size() - 1) + " more)";
            throw BackendError(msg);
        }
        return inner_->compile(mil_text, blobs, label);
    }

private:
    std::shared_ptr<Backend> inner_;
    RuleSet rules_;
    AsCompiled as_compiled_;
};

}  // namespace

std::shared_ptr<Backend> rule_checked(std::shared_ptr<Backend> inner, RuleSet rules, AsCompiled as_compiled) {
    return std::make_shared<RuleCheckedBackend>(std::move(inner), std::move(rules), std::move(as_compiled));
}

}  // namespace anetrain::backend::ane
