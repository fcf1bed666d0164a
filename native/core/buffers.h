// Large 64-byte-aligned buffers for arrays handed to Python, recycled through a small cache:
// a freshly mapped buffer costs the kernel a page fault and a zeroing per page (more than the
// fp16 conversion that fills it), so converting arrays of the same size again and again would
// otherwise run at page-fault speed. The cache holds at most kCacheBytes; anything beyond is
// returned to the system at once.
#pragma once
#include <cstddef>

namespace anetrain::buffers {

constexpr size_t kCacheBytes = size_t(256) << 20;
constexpr size_t kMinCachedBytes = size_t(1) << 20;  // smaller buffers go straight to malloc/free

void* acquire(size_t bytes);         // uninitialised; never nullptr (throws std::bad_alloc)
void release(void* p);               // p from acquire
size_t cached_bytes();
void clear();                        // return every cached buffer to the system

}  // namespace anetrain::buffers
