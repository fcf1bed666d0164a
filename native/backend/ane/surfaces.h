// IOSurface sizing and bookkeeping for ANE programs (portable C++, tested on Linux).
//
// Every ANE input and output lives in a one-row byte IOSurface whose allocation is rounded up to
// 128 bytes. A tensor [1, C, 1, S] occupies C*S contiguous elements, channel c at element c*S.
// A program's requests come in "slots": slot 0 is created with the program, further slots get
// their own input surfaces but share the program's output surfaces (the dynamic pipeline keeps
// one slot per layer, each with that layer's inputs). With packed inputs, all of a slot's
// inputs are concatenated in one surface in MIL parameter order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace anetrain::backend::ane {

constexpr size_t kSurfaceAlignment = 128;

size_t surface_alloc_bytes(size_t bytes);       // round up to kSurfaceAlignment (0 -> 128)
size_t surface_element_bytes(DType dtype);      // fp16: 2, fp32: 4; throws BackendError otherwise
size_t tensor_numel(const std::vector<int64_t>& shape);  // throws BackendError on negative/overflow
size_t tensor_bytes(const TensorSpec& spec);    // numel x element bytes
// Byte offset of channel `c` of a [1, C, 1, S] (or any rank-4 [1, C, H, W]) tensor.
size_t channel_offset_bytes(const TensorSpec& spec, int64_t c);

// Where one tensor lives: surface id, byte offset inside it, byte size.
struct SurfaceRange {
    size_t surface = 0;
    size_t offset = 0;
    size_t bytes = 0;
};

class SurfaceTable {
public:
    SurfaceTable(std::vector<TensorSpec> inputs, std::vector<TensorSpec> outputs, bool packed_inputs);

    size_t add_slot();  // the new slot's index
    size_t slots() const { return slots_; }
    bool packed_inputs() const { return packed_; }
    const std::vector<TensorSpec>& inputs() const { return inputs_; }
    const std::vector<TensorSpec>& outputs() const { return outputs_; }

    SurfaceRange input(size_t slot, size_t i) const;
    SurfaceRange output(size_t j) const;

    // Surfaces are numbered: outputs first (shared by every slot), then each slot's inputs.
    size_t surface_count() const { return outputs_.size() + slots_ * surfaces_per_slot(); }
    size_t surface_bytes(size_t id) const;  // bytes the tensors use
    size_t surface_alloc(size_t id) const;  // allocation size, a multiple of 128

    // The surface ids a slot's request binds, in request index order.
    std::vector<size_t> request_inputs(size_t slot) const;
    std::vector<size_t> request_outputs() const;

private:
    size_t surfaces_per_slot() const { return packed_ ? (inputs_.empty() ? 0 : 1) : inputs_.size(); }
    std::vector<TensorSpec> inputs_, outputs_;
    std::vector<size_t> input_offsets_;  // packed: byte offset of each input in the slot surface
    size_t packed_bytes_ = 0;
    bool packed_;
    size_t slots_ = 1;
};

// Copy a caller's buffer into surface memory laid out as `spec` (fp32 host data for an fp16
// tensor is converted with round-to-nearest-even), and back out (fp16 -> fp32 is exact).
// Throws BackendError when the host buffer's dtype or size does not fit the spec.
void write_tensor(const TensorSpec& spec, const HostTensor& src, void* surface_at);
// Only the column ranges [begin, end) of every row of a rank-4 [1, C, 1, W] tensor (src.columns
// says which; empty: the whole tensor, as write_tensor). Throws BackendError for a range outside
// [0, W) or a tensor of another shape.
void write_columns(const TensorSpec& spec, const HostTensor& src, void* surface_at);
void read_tensor(const TensorSpec& spec, const void* surface_at, const HostTensor& dst);

}  // namespace anetrain::backend::ane
