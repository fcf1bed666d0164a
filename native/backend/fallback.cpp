#include "backend/fallback.h"

namespace anetrain::backend {

FallbackBackend::FallbackBackend(std::shared_ptr<Backend> primary, std::shared_ptr<Backend> secondary, bool strict)
    : Backend(-1), primary_(std::move(primary)), secondary_(std::move(secondary)),
      strict_(strict) {
    if (!primary_ || !secondary_) throw std::invalid_argument("FallbackBackend needs a primary and a secondary backend");
}

std::unique_ptr<Kernel> FallbackBackend::compile_program(const mil::Program&, const std::string& mil_text,
                                                         const Blobs& blobs, const std::string& label) {
    std::string reason;
    try {
        return primary_->compile(mil_text, blobs, label);
    } catch (const CompileBudgetExceeded&) {
        throw;  // the process must restart; not the primary's inability to run this program
    } catch (const BackendError& e) {
        if (strict_) throw;
        reason = e.what();
    }
    std::unique_ptr<Kernel> k = secondary_->compile(mil_text, blobs, label);
    k->set_placement_note(primary_->name() + ": " + reason);
    std::lock_guard<std::mutex> lock(mu_);
    fallbacks_.push_back({label, reason});
    return k;
}

std::vector<FallbackBackend::Fallback> FallbackBackend::fallbacks() const {
    std::lock_guard<std::mutex> lock(mu_);
    return fallbacks_;
}

}  // namespace anetrain::backend
