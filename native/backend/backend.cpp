// The parts of the Backend interface every backend shares: budget accounting and I/O specs.
#include "backend/backend.h"

#include <cmath>
#include <cstring>
#include <limits>

namespace anetrain::backend {

int64_t TensorSpec::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

size_t TensorSpec::nbytes() const { return size_t(numel()) * mil::dtype_size(dtype); }

std::unique_ptr<Kernel> Backend::compile(const std::string& mil_text, const Blobs& blobs, const std::string& label) {
    {
        std::lock_guard<std::mutex> lk(mu_);
        if (budget_ >= 0 && compiles_ >= budget_)
            throw CompileBudgetExceeded("compile budget of " + std::to_string(budget_) + " exhausted on the " + name() +
                                        " backend (" + std::to_string(compiles_) +
                                        " compiles in this process): checkpoint and restart the process");
        ++compiles_;
    }
    mil::Program program = mil::parse(mil_text);
    return compile_program(program, mil_text, blobs, label);
}

int64_t Backend::compiles() const {
    std::lock_guard<std::mutex> lk(mu_);
    return compiles_;
}

int64_t Backend::budget() const {
    std::lock_guard<std::mutex> lk(mu_);
    return budget_;
}

void Backend::set_budget(int64_t budget) {
    std::lock_guard<std::mutex> lk(mu_);
    budget_ = budget < 0 ? -1 : budget;
}

int64_t Backend::remaining() const {
    std::lock_guard<std::mutex> lk(mu_);
    if (budget_ < 0) return -1;
    return budget_ > compiles_ ? budget_ - compiles_ : 0;
}

std::vector<TensorSpec> input_specs(const mil::Function& f) {
    std::vector<TensorSpec> specs;
    for (const auto& p : f.inputs) specs.push_back({p.name, p.type.dtype, p.type.shape});
    return specs;
}

std::vector<TensorSpec> output_specs(const mil::Function& f) {
    std::vector<TensorSpec> specs;
    for (const auto& name : f.outputs)
        for (const auto& p : f.inputs)
            if (p.name == name) specs.push_back({name, p.type.dtype, p.type.shape});
    for (const auto& name : f.outputs)
        for (const auto& op : f.ops)
            for (size_t i = 0; i < op.outputs.size(); ++i)
                if (op.outputs[i] == name) specs.push_back({name, op.output_types[i].dtype, op.output_types[i].shape});
    // Restore return order (a parameter may be returned directly).
    std::vector<TensorSpec> ordered;
    for (const auto& name : f.outputs)
        for (const auto& s : specs)
            if (s.name == name) {
                ordered.push_back(s);
                break;
            }
    return ordered;
}

void check_host_tensors(const std::vector<TensorSpec>& specs, const std::vector<HostTensor>& bufs, const char* what) {
    if (bufs.size() != specs.size())
        throw BackendError(std::string("expected ") + std::to_string(specs.size()) + " " + what + " buffer(s), got " +
                           std::to_string(bufs.size()));
    for (size_t i = 0; i < specs.size(); ++i) {
        const TensorSpec& s = specs[i];
        const HostTensor& b = bufs[i];
        bool dtype_ok = b.dtype == s.dtype || (s.dtype == DType::fp16 && b.dtype == DType::fp32);
        if (!dtype_ok)
            throw BackendError(std::string(what) + " '" + s.name + "': expected dtype " + mil::dtype_name(s.dtype) + ", got " +
                               mil::dtype_name(b.dtype));
        if (b.numel != s.numel())
            throw BackendError(std::string(what) + " '" + s.name + "': expected " + std::to_string(s.numel()) +
                               " elements, got " + std::to_string(b.numel));
        if (b.numel > 0 && b.data == nullptr) throw BackendError(std::string(what) + " '" + s.name + "': null buffer");
    }
}

void poison_outputs(const std::vector<HostTensor>& out) {
    for (const auto& b : out) {
        if (!b.data) continue;
        if (b.dtype == DType::fp32) {
            float* p = static_cast<float*>(b.data);
            for (int64_t i = 0; i < b.numel; ++i) p[i] = std::numeric_limits<float>::quiet_NaN();
        } else if (b.dtype == DType::fp16) {
            uint16_t* p = static_cast<uint16_t*>(b.data);
            for (int64_t i = 0; i < b.numel; ++i) p[i] = 0x7E00;
        }
    }
}

}  // namespace anetrain::backend
