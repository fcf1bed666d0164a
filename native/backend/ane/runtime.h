// The Apple Neural Engine runtime: plain C++ over the private AppleNeuralEngine.framework.
// Implemented in runtime.mm (macOS only); unavailable.cpp supplies the platform queries
// elsewhere. Everything here throws BackendError carrying the framework's own message and
// never leaves a half-built program behind.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/ane/dialect.h"
#include "backend/ane/surfaces.h"
#include "backend/backend.h"

namespace anetrain::backend::ane {

struct PlatformStatus {
    bool available = false;
    std::string reason;  // why not, when unavailable
};
// dlopen of the framework plus resolution of the classes the backend uses; computed once.
const PlatformStatus& platform_status();
// Brand and model via sysctl, ANE sub-type via _ANEDeviceInfo when the framework answers.
ChipInfo detect_chip();

// Framework introspection for the probes.
struct ClassInfo {
    bool exists = false;
    std::vector<std::string> class_methods, instance_methods, properties;
};
std::vector<std::string> framework_classes(const std::string& prefix);  // loaded classes named prefix*
ClassInfo describe_class(const std::string& name);
// Whether class `name` answers `selector` as a class method (class_method) or its instances do,
// inherited methods included: what respondsToSelector: will say when the runtime sends it.
bool class_answers(const std::string& name, const std::string& selector, bool class_method);
// Tries to build the shared-event objects (signal/wait) the framework declares; one line per attempt.
std::vector<std::string> shared_event_probe();

// ANE compile attempts made by this process so far (the compiler's limit of about 119 is per
// process, whichever backend object asked).
int64_t process_compiles();

// Removes the model directories dead processes left in the temporary directory
// (model_dirs.h sweep_stale); does the work on the first call of the process only, which
// make_ane_backend makes. Returns what that call removed.
std::vector<std::string> sweep_stale_model_dirs();

struct ProgramTimings {
    double compile_ms = 0;
    double load_ms = 0;
};

// One compiled, loaded program with its IOSurfaces and one reusable request per slot.
class Program {
public:
    // Writes the model directory (model.mil + weights/...; listed in this process's registry of
    // model directories first), compiles, loads (one retry after 100 ms), creates slot 0's
    // surfaces and request. Throws BackendError on any failure after removing what it created,
    // the model directory included unless another live program shares it.
    Program(const std::string& mil_text, const Blobs& blobs, SurfaceTable table, unsigned qos);
    ~Program();  // unload, release requests and surfaces, remove the model directory (its last user)
    Program(const Program&) = delete;
    Program& operator=(const Program&) = delete;

    const SurfaceTable& table() const;
    const ProgramTimings& timings() const;
    const std::string& model_dir() const;

    size_t add_slot();            // new input surfaces + request sharing the output surfaces
    void evaluate(size_t slot);   // synchronous; throws BackendError with the NSError text

    // CPU access to one surface for the lifetime of the object (IOSurfaceLock/Unlock).
    class Mapping {
    public:
        Mapping(void* surface, bool read_only);
        ~Mapping();
        Mapping(const Mapping&) = delete;
        Mapping& operator=(const Mapping&) = delete;
        void* data() const { return base_; }

    private:
        void* surface_;
        void* base_;
        bool read_only_;
    };
    Mapping map(size_t surface_id, bool read_only);

    // Probe experiments (scripts/probe.py).
    void reload();  // unload + load without compiling
    void overwrite_model_file(const std::string& relative_path, const std::string& bytes);
    // Evaluate slot 0 through a one-off request with the given procedureIndex and, when
    // `weights` is non-empty, an IOSurface holding those bytes as weightsBuffer.
    void evaluate_variant(long procedure_index, const std::string& weights);
    // Sets the model's perfStatsMask, evaluates slot 0, and describes what the framework returns.
    std::string evaluate_with_perf_stats(unsigned mask);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace anetrain::backend::ane
