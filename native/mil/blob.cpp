#include "mil/blob.h"

#include <cstring>
#include <stdexcept>

namespace anetrain::mil::blob {
namespace {

size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

void put_u32(std::string& s, size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) s[at + i] = char((v >> (8 * i)) & 0xffu);
}
void put_u64(std::string& s, size_t at, uint64_t v) {
    for (int i = 0; i < 8; ++i) s[at + i] = char((v >> (8 * i)) & 0xffu);
}
uint32_t get_u32(const std::string& s, size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | uint8_t(s[at + i]);
    return v;
}
uint64_t get_u64(const std::string& s, size_t at) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | uint8_t(s[at + i]);
    return v;
}

}  // namespace

uint32_t dtype_code(DType d) {
    switch (d) {
        case DType::fp16: return 1;
        case DType::fp32: return 2;
        case DType::uint8: return 3;
        case DType::int8: return 4;
        case DType::int16: return 6;
        case DType::uint16: return 7;
        case DType::int32: return 14;
        default: throw std::invalid_argument(std::string("a weight blob cannot hold ") + dtype_name(d) + " data");
    }
}

DType dtype_from_code(uint32_t code) {
    switch (code) {
        case 1: return DType::fp16;
        case 2: return DType::fp32;
        case 3: return DType::uint8;
        case 4: return DType::int8;
        case 6: return DType::int16;
        case 7: return DType::uint16;
        case 14: return DType::int32;
        default: throw std::invalid_argument("unsupported blob dtype code " + std::to_string(code));
    }
}

std::string write(const std::vector<Entry>& entries, std::vector<uint64_t>* offsets) {
    size_t total = kHeaderBytes;
    for (const Entry& e : entries) total += kRecordBytes + align_up(e.nbytes);
    std::string out(total, '\0');
    put_u32(out, 0, uint32_t(entries.size()));
    put_u32(out, 4, kVersion);
    if (offsets) offsets->clear();
    size_t at = kHeaderBytes;
    for (const Entry& e : entries) {
        const size_t data_at = at + kRecordBytes;
        put_u32(out, at, kSentinel);
        put_u32(out, at + 4, dtype_code(e.dtype));
        put_u64(out, at + 8, e.nbytes);
        put_u64(out, at + 16, data_at);
        if (e.nbytes) std::memcpy(&out[data_at], e.data, e.nbytes);
        if (offsets) offsets->push_back(at);
        at = data_at + align_up(e.nbytes);
    }
    return out;
}

Record read_record(const std::string& file, uint64_t off) {
    const uint64_t n = file.size();
    const std::string at = "blob offset " + std::to_string(off);
    if (n < kHeaderBytes || get_u32(file, 4) != kVersion)
        throw std::invalid_argument("not a MIL blob file (version-2 storage header missing)");
    if (off > n || n - off < kRecordBytes)
        throw std::invalid_argument(at + " is outside the " + std::to_string(n) +
                                    "-byte file; point offset at a blob's 64-byte metadata record");
    if (get_u32(file, off) != kSentinel)
        throw std::invalid_argument(at + " has no 0xDEADBEEF sentinel; offset must point at a blob's 64-byte "
                                    "metadata record");
    if (off % kAlign != 0) throw std::invalid_argument(at + " is not 64-byte aligned");
    Record r;
    r.record_offset = off;
    r.dtype = dtype_from_code(get_u32(file, off + 4));
    r.size = get_u64(file, off + 8);
    r.data_offset = get_u64(file, off + 16);
    if (r.data_offset > n || r.size > n - r.data_offset)
        throw std::invalid_argument(at + ": data at " + std::to_string(r.data_offset) + " (+" + std::to_string(r.size) +
                                    " bytes) runs past the end of the " + std::to_string(n) + "-byte file");
    return r;
}

std::vector<Record> read_all(const std::string& file) {
    if (file.size() < kHeaderBytes) throw std::invalid_argument("blob file shorter than its 64-byte header");
    const uint32_t count = get_u32(file, 0);
    std::vector<Record> out;
    uint64_t at = kHeaderBytes;
    for (uint32_t i = 0; i < count; ++i) {
        Record r = read_record(file, at);
        out.push_back(r);
        at = align_up(size_t(r.data_offset + r.size));
    }
    return out;
}

}  // namespace anetrain::mil::blob
