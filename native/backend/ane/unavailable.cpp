// The ANE backend's platform queries where the framework cannot exist (everything but macOS).
#if !defined(__APPLE__)
#include "backend/ane/ane_backend.h"
#include "backend/ane/runtime.h"

namespace anetrain::backend::ane {

const PlatformStatus& platform_status() {
#if defined(__linux__)
    static const PlatformStatus status{false, "the Apple Neural Engine needs macOS on Apple silicon; this is Linux"};
#else
    static const PlatformStatus status{false, "the Apple Neural Engine needs macOS on Apple silicon"};
#endif
    return status;
}

ChipInfo detect_chip() { return {}; }

int64_t process_compiles() { return 0; }

std::vector<std::string> sweep_stale_model_dirs() { return {}; }

std::vector<std::string> framework_classes(const std::string&) { return {}; }

ClassInfo describe_class(const std::string&) { return {}; }

bool class_answers(const std::string&, const std::string&, bool) { return false; }

std::vector<std::string> shared_event_probe() { return {}; }

std::shared_ptr<Backend> make_ane_backend(const AneOptions&) {
    throw BackendError("the ANE backend is unavailable: " + platform_status().reason);
}

}  // namespace anetrain::backend::ane
#endif
