// MIL blob storage, version 2: the weight files a program names with
// BLOBFILE(path = string("@model_path/weights/<f>.bin"), offset = uint64(<record offset>)).
//
//   offset 0   storage header, 64 bytes: u32 blob count, u32 version (2), 56 zero bytes
//   then per blob, each at a 64-byte aligned offset:
//     record, 64 bytes: u32 sentinel 0xDEADBEEF, u32 dtype code, u64 data size in bytes,
//                       u64 absolute data offset, u64 padding in bits (0), 32 zero bytes
//     data, right after the record (so also 64-byte aligned), zero-padded to 64 bytes
// All fields little-endian. BLOBFILE offsets point at the record, not at the data.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mil/ir.h"

namespace anetrain::mil::blob {

constexpr uint32_t kSentinel = 0xDEADBEEFu;
constexpr uint32_t kVersion = 2;
constexpr size_t kAlign = 64;
constexpr size_t kHeaderBytes = 64;
constexpr size_t kRecordBytes = 64;

// Storage dtype codes (coremltools BlobDataType): fp16 1, fp32 2, uint8 3, int8 4, int16 6,
// uint16 7, int32 14. Throws std::invalid_argument for dtypes blobs cannot hold.
uint32_t dtype_code(DType d);
DType dtype_from_code(uint32_t code);  // throws std::invalid_argument for unknown codes

struct Entry {
    DType dtype;
    const void* data;
    size_t nbytes;
};

// The whole file; offsets[i] is entry i's record offset (the BLOBFILE offset).
std::string write(const std::vector<Entry>& entries, std::vector<uint64_t>* offsets = nullptr);

struct Record {
    uint64_t record_offset = 0;
    DType dtype = DType::fp16;
    uint64_t size = 0;         // data bytes
    uint64_t data_offset = 0;  // absolute
};

// The record at `record_offset`, validated: inside the file, sentinel, known dtype, data range
// inside the file. Throws std::invalid_argument with a message naming the problem.
Record read_record(const std::string& file, uint64_t record_offset);
// All records, following the header's count. Throws std::invalid_argument on any malformation.
std::vector<Record> read_all(const std::string& file);

}  // namespace anetrain::mil::blob
