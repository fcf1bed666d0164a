#include "backend/ane/surfaces.h"

#include <cstring>
#include <limits>
#include <string>

#include "core/fp16.h"

namespace anetrain::backend::ane {

size_t surface_alloc_bytes(size_t bytes) {
    if (bytes == 0) return kSurfaceAlignment;
    return (bytes + kSurfaceAlignment - 1) / kSurfaceAlignment * kSurfaceAlignment;
}

size_t surface_element_bytes(DType dtype) {
    if (dtype == DType::fp16) return 2;
    if (dtype == DType::fp32) return 4;
    throw BackendError("ANE inputs and outputs must be fp16 or fp32 tensors; cast other dtypes inside the program");
}

size_t tensor_numel(const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (int64_t d : shape) {
        if (d < 0) throw BackendError("tensor shape has a negative dimension");
        if (d != 0 && n > std::numeric_limits<size_t>::max() / size_t(d))
            throw BackendError("tensor shape is too large to address");
        n *= size_t(d);
    }
    return n;
}

size_t tensor_bytes(const TensorSpec& spec) { return tensor_numel(spec.shape) * surface_element_bytes(spec.dtype); }

size_t channel_offset_bytes(const TensorSpec& spec, int64_t c) {
    if (spec.shape.size() != 4 || spec.shape[0] != 1)
        throw BackendError("tensor '" + spec.name + "' is not laid out [1, C, H, W]");
    if (c < 0 || c > spec.shape[1])
        throw BackendError("channel " + std::to_string(c) + " is outside tensor '" + spec.name + "'");
    return size_t(c) * size_t(spec.shape[2]) * size_t(spec.shape[3]) * surface_element_bytes(spec.dtype);
}

SurfaceTable::SurfaceTable(std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs, bool packed_inputs)
    : inputs_(std::move(inputs)), outputs_(std::move(outputs)), packed_(packed_inputs) {
    for (const TensorSpec& s : inputs_) {
        input_offsets_.push_back(packed_bytes_);
        packed_bytes_ += tensor_bytes(s);
    }
    for (const TensorSpec& s : outputs_) tensor_bytes(s);  // validates dtypes and shapes
}

size_t SurfaceTable::add_slot() { return slots_++; }

SurfaceRange SurfaceTable::input(size_t slot, size_t i) const {
    if (slot >= slots_ || i >= inputs_.size())
        throw BackendError("input " + std::to_string(i) + " of slot " + std::to_string(slot) + " does not exist");
    size_t first = outputs_.size() + slot * surfaces_per_slot();
    if (packed_) return {first, input_offsets_[i], tensor_bytes(inputs_[i])};
    return {first + i, 0, tensor_bytes(inputs_[i])};
}

SurfaceRange SurfaceTable::output(size_t j) const {
    if (j >= outputs_.size()) throw BackendError("output " + std::to_string(j) + " does not exist");
    return {j, 0, tensor_bytes(outputs_[j])};
}

size_t SurfaceTable::surface_bytes(size_t id) const {
    if (id >= surface_count()) throw BackendError("surface " + std::to_string(id) + " does not exist");
    if (id < outputs_.size()) return tensor_bytes(outputs_[id]);
    if (packed_) return packed_bytes_;
    return tensor_bytes(inputs_[(id - outputs_.size()) % inputs_.size()]);
}

size_t SurfaceTable::surface_alloc(size_t id) const { return surface_alloc_bytes(surface_bytes(id)); }

std::vector<size_t> SurfaceTable::request_inputs(size_t slot) const {
    if (slot >= slots_) throw BackendError("slot " + std::to_string(slot) + " does not exist");
    std::vector<size_t> ids;
    size_t first = outputs_.size() + slot * surfaces_per_slot();
    for (size_t k = 0; k < surfaces_per_slot(); ++k) ids.push_back(first + k);
    return ids;
}

std::vector<size_t> SurfaceTable::request_outputs() const {
    std::vector<size_t> ids;
    for (size_t j = 0; j < outputs_.size(); ++j) ids.push_back(j);
    return ids;
}

namespace {

// Only the two surface dtypes need names here (mil::dtype_name lives with the parser).
const char* io_dtype_name(DType d) { return d == DType::fp16 ? "fp16" : d == DType::fp32 ? "fp32" : "not fp16/fp32"; }

void check_host(const TensorSpec& spec, const HostTensor& h) {
    size_t n = tensor_numel(spec.shape);
    bool dtype_ok = h.dtype == spec.dtype || (spec.dtype == DType::fp16 && h.dtype == DType::fp32);
    if (!dtype_ok)
        throw BackendError("tensor '" + spec.name + "' is " + io_dtype_name(spec.dtype) + "; the buffer is " +
                           io_dtype_name(h.dtype));
    if (h.numel < 0 || size_t(h.numel) != n || (n && !h.data))
        throw BackendError("tensor '" + spec.name + "' has " + std::to_string(n) + " elements; the buffer has " +
                           std::to_string(h.numel));
}

}  // namespace

void write_tensor(const TensorSpec& spec, const HostTensor& src, void* surface_at) {
    check_host(spec, src);
    size_t n = size_t(src.numel);
    if (spec.dtype == DType::fp16 && src.dtype == DType::fp32)
        fp16::f32_to_f16(static_cast<const float*>(src.data), static_cast<uint16_t*>(surface_at), n);
    else
        std::memcpy(surface_at, src.data, n * surface_element_bytes(spec.dtype));
}

void write_columns(const TensorSpec& spec, const HostTensor& src, void* surface_at) {
    if (src.columns.empty()) return write_tensor(spec, src, surface_at);
    check_host(spec, src);
    const auto& sh = spec.shape;
    if (sh.size() != 4 || sh[0] != 1 || sh[2] != 1)
        throw BackendError("input '" + spec.name + "': column writes need a [1, C, 1, W] tensor");
    const int64_t C = sh[1], W = sh[3];
    const size_t elem = surface_element_bytes(spec.dtype);
    const bool convert = spec.dtype == DType::fp16 && src.dtype == DType::fp32;
    for (const auto& [begin, end] : src.columns) {
        if (begin < 0 || end > W || begin >= end)
            throw BackendError("input '" + spec.name + "': column range [" + std::to_string(begin) + ", " +
                               std::to_string(end) + ") is not inside its width " + std::to_string(W));
        for (int64_t c = 0; c < C; ++c) {
            const size_t at = size_t(c * W + begin), n = size_t(end - begin);
            char* dst = static_cast<char*>(surface_at) + at * elem;
            if (convert)
                fp16::f32_to_f16(static_cast<const float*>(src.data) + at, reinterpret_cast<uint16_t*>(dst), n);
            else
                std::memcpy(dst, static_cast<const char*>(src.data) + at * elem, n * elem);
        }
    }
}

void read_tensor(const TensorSpec& spec, const void* surface_at, const HostTensor& dst) {
    check_host(spec, dst);
    size_t n = size_t(dst.numel);
    if (spec.dtype == DType::fp16 && dst.dtype == DType::fp32)
        fp16::f16_to_f32(static_cast<const uint16_t*>(surface_at), static_cast<float*>(dst.data), n);
    else
        std::memcpy(dst.data, surface_at, n * surface_element_bytes(spec.dtype));
}

}  // namespace anetrain::backend::ane
