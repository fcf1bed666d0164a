// The ANE backend: a Backend whose kernels run on the Apple Neural Engine (macOS only; off
// macOS make_ane_backend throws BackendError saying why).
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/ane/policy.h"
#include "backend/ane/runtime.h"
#include "backend/backend.h"

namespace anetrain::backend::ane {

// Budget, QoS and multi-input come from `options` (see options_from_env()).
// Its compile budget counts every ANE compile of the process (process_compiles()), not only its own.
std::shared_ptr<Backend> make_ane_backend(const AneOptions& options);

// An ANE kernel. eval() uses slot 0. The dynamic pipeline adds a slot per layer: each slot has
// its own input surfaces (write a layer's packed weights once per optimizer update, only the
// activations per step) and shares the kernel's output surfaces.
class AneKernel : public Kernel {
public:
    AneKernel(std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs, std::string label,
              std::unique_ptr<Program> program);

    void eval(const std::vector<HostTensor>& in, const std::vector<HostTensor>& out) override;

    size_t add_slot();
    size_t slots() const;
    void write_input(size_t slot, size_t i, const HostTensor& in);
    void write_inputs(size_t slot, const std::vector<HostTensor>& in);
    // Evaluate the slot's request and copy the outputs out; on failure the outputs are NaN.
    void eval_slot(size_t slot, const std::vector<HostTensor>& out);
    // Copy the (shared) output surfaces out as they are now.
    void read_outputs(const std::vector<HostTensor>& out);

    Program& program() { return *program_; }

private:
    std::unique_ptr<Program> program_;
    std::map<uint64_t, size_t> reuse_slots_;  // HostTensor::reuse_id -> the slot holding that buffer
};

}  // namespace anetrain::backend::ane
