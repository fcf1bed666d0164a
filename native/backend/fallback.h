// A backend that compiles on a primary backend (the ANE) and, for a program the primary cannot
// run, on a secondary one (ref), saying so: the kernel's placement_note() carries the primary's
// message, and placements() lists every fallback. Nothing above the Backend interface needs to
// know which backend a kernel landed on to use it; whoever reports placement asks here.
#pragma once
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace anetrain::backend {

class FallbackBackend : public Backend {
public:
    // strict: no fallback; the primary's error propagates.
    FallbackBackend(std::shared_ptr<Backend> primary, std::shared_ptr<Backend> secondary, bool strict);

    std::string name() const override { return primary_->name(); }
    bool supports(const std::string& op) const override { return primary_->supports(op) || secondary_->supports(op); }

    struct Fallback {
        std::string label, reason;
    };
    std::vector<Fallback> fallbacks() const;  // every compile that went to the secondary, in order
    // The primary's budget binds (the secondary, ref, has none).
    int64_t compiles() const override { return primary_->compiles(); }
    int64_t budget() const override { return primary_->budget(); }
    void set_budget(int64_t b) override { primary_->set_budget(b); }
    int64_t remaining() const override { return primary_->remaining(); }
    const Backend& primary() const { return *primary_; }
    const Backend& secondary() const { return *secondary_; }

protected:
    std::unique_ptr<Kernel> compile_program(const mil::Program& program, const std::string& mil_text,
                                            const Blobs& blobs, const std::string& label) override;

private:
    std::shared_ptr<Backend> primary_, secondary_;
    bool strict_;
    mutable std::mutex mu_;
    std::vector<Fallback> fallbacks_;
};

}  // namespace anetrain::backend
