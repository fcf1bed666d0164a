// The Backend interface: turn (MIL text, weight blobs) into a Kernel and evaluate it.
// A backend is a handful of functions — compile, evaluate, counters/budget, supports() — and
// nothing else leaks. Implementations: ref (CPU, executes the MIL text), ane (macOS).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/timer.h"
#include "mil/ir.h"

namespace anetrain::backend {

using mil::DType;

// Blob files by the path the MIL names them with: "@model_path/weights/w.bin" -> file bytes.
using Blobs = std::map<std::string, std::string>;

struct TensorSpec {
    std::string name;
    DType dtype = DType::fp16;
    std::vector<int64_t> shape;
    int64_t numel() const;
    size_t nbytes() const;
};

// A compile or evaluation failure; what() carries the backend's own message.
class BackendError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The compile budget is spent: the process must checkpoint and restart (the driver's exec()).
class CompileBudgetExceeded : public BackendError {
public:
    using BackendError::BackendError;
};

// A caller's buffer for one input or output: C-contiguous, exactly spec.numel() elements, in
// `dtype`. A tensor declared fp16 may also be passed as fp32 (converted with RNE going in,
// exactly coming out), so the trainer never converts twice.
struct HostTensor {
    void* data = nullptr;
    DType dtype = DType::fp16;
    int64_t numel = 0;
    // fp32 data the caller knows to hold fp16 values already (e.g. an fp16 kernel's outputs): a
    // backend may skip rounding it. Ignored for fp16 data.
    bool fp16_exact = false;
    // An input buffer the caller passes again and again (the trainer's packed ANE-shaped inputs,
    // weights staged in them): a non-zero id names it, and `columns` lists the column ranges
    // [begin, end) of its [1, C, 1, W] layout written since the buffer was last evaluated (empty:
    // all of it). A backend that keeps its own copy of each such buffer (the ANE: input surfaces
    // per id) copies only those columns; the others read the buffer as it is.
    uint64_t reuse_id = 0;
    std::vector<std::pair<int64_t, int64_t>> columns;
};

class Kernel {
public:
    virtual ~Kernel() = default;
    const std::vector<TensorSpec>& inputs() const { return inputs_; }
    const std::vector<TensorSpec>& outputs() const { return outputs_; }
    const std::string& label() const { return label_; }
    const std::string& backend_name() const { return backend_name_; }
    // Why the kernel runs on backend_name() rather than the backend it was asked of ("" when it
    // runs where asked); a FallbackBackend sets it.
    const std::string& placement_note() const { return placement_note_; }
    void set_placement_note(std::string note) { placement_note_ = std::move(note); }

    // Evaluate synchronously. Throws BackendError (never returns partial results): when it
    // throws, every floating-point output buffer has been filled with NaN so that stale data
    // from an earlier evaluation cannot be mistaken for a result.
    virtual void eval(const std::vector<HostTensor>& in, const std::vector<HostTensor>& out) = 0;

    // Milliseconds spent moving data between the caller's buffers and the kernel's own, summed
    // over evaluations: fp16 conversion into and out of IOSurfaces on the ANE, input rounding
    // and output copies on ref. The trainer reports it as the step's "fp16 I/O".
    double io_ms() const { return io_ms_; }

protected:
    using IoTimer = ScopedTimer;  // adds the lifetime of the scope to io_ms_

    std::vector<TensorSpec> inputs_, outputs_;
    std::string label_, backend_name_, placement_note_;
    double io_ms_ = 0;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;
    // Whether this backend can compile programs using `op` (for the fallback logic).
    virtual bool supports(const std::string& op) const = 0;

    // Parse, check and compile. Every call counts against the compile budget, success or not
    // (on the ANE a failed compile still consumes compiler resources). When the budget is
    // already spent, throws CompileBudgetExceeded without compiling. Parse and validation
    // problems throw mil::MilError; compiler failures throw BackendError.
    std::unique_ptr<Kernel> compile(const std::string& mil_text, const Blobs& blobs, const std::string& label = "");

    // A backend that hands programs to another (FallbackBackend, the rule check) reports that
    // one's budget, so whoever plans restarts sees the budget that binds.
    virtual int64_t compiles() const;
    virtual int64_t budget() const;             // -1: unlimited
    virtual void set_budget(int64_t budget);    // -1: unlimited
    virtual int64_t remaining() const;          // -1 when unlimited

protected:
    virtual std::unique_ptr<Kernel> compile_program(const mil::Program& program, const std::string& mil_text,
                                                    const Blobs& blobs, const std::string& label) = 0;
    explicit Backend(int64_t budget) : budget_(budget) {}

private:
    mutable std::mutex mu_;
    int64_t compiles_ = 0;
    int64_t budget_ = -1;
};

// Helpers shared by the backends.
std::vector<TensorSpec> input_specs(const mil::Function& f);
std::vector<TensorSpec> output_specs(const mil::Function& f);  // types from the defining statements
// Check caller buffers against specs (count, dtype or fp32-for-fp16, numel); throws BackendError.
void check_host_tensors(const std::vector<TensorSpec>& specs, const std::vector<HostTensor>& bufs, const char* what);
// Fill floating-point outputs with NaN (after a failed evaluation).
void poison_outputs(const std::vector<HostTensor>& out);

}  // namespace anetrain::backend
