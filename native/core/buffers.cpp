#include "core/buffers.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace anetrain::buffers {
namespace {

struct Cache {
    std::mutex mu;
    std::multimap<size_t, void*> idle;             // size -> buffer
    std::unordered_map<void*, size_t> size_of;     // every live or idle buffer from acquire
    size_t idle_bytes = 0;
};

Cache& cache() {
    static Cache* c = new Cache();  // leaked on purpose: arrays may outlive static destruction
    return *c;
}

size_t rounded(size_t bytes) { return (bytes + 63) / 64 * 64; }

}  // namespace

void* acquire(size_t bytes) {
    const size_t n = rounded(bytes ? bytes : 1);
    Cache& c = cache();
    {
        std::lock_guard<std::mutex> lk(c.mu);
        auto it = c.idle.find(n);
        if (it != c.idle.end()) {
            void* p = it->second;
            c.idle.erase(it);
            c.idle_bytes -= n;
            return p;
        }
    }
    // Large buffers are 2 MiB aligned and asked to be backed by huge pages (as NumPy does), so
    // first use faults once per 2 MiB instead of once per 4 KiB.
    const bool huge = n >= kMinCachedBytes * 4;
    const size_t align = huge ? size_t(2) << 20 : 64;
    void* p = std::aligned_alloc(align, (n + align - 1) / align * align);
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p, (n + align - 1) / align * align, MADV_HUGEPAGE);
#endif
    std::lock_guard<std::mutex> lk(c.mu);
    c.size_of[p] = n;
    return p;
}

void release(void* p) {
    if (!p) return;
    Cache& c = cache();
    std::lock_guard<std::mutex> lk(c.mu);
    const size_t n = c.size_of.at(p);
    if (n < kMinCachedBytes || n > kCacheBytes) {
        c.size_of.erase(p);
        std::free(p);
        return;
    }
    while (c.idle_bytes + n > kCacheBytes && !c.idle.empty()) {  // make room: drop the largest
        auto big = std::prev(c.idle.end());
        c.idle_bytes -= big->first;
        c.size_of.erase(big->second);
        std::free(big->second);
        c.idle.erase(big);
    }
    c.idle.emplace(n, p);
    c.idle_bytes += n;
}

size_t cached_bytes() {
    std::lock_guard<std::mutex> lk(cache().mu);
    return cache().idle_bytes;
}

void clear() {
    Cache& c = cache();
    std::lock_guard<std::mutex> lk(c.mu);
    for (auto& [n, p] : c.idle) {
        c.size_of.erase(p);
        std::free(p);
    }
    c.idle.clear();
    c.idle_bytes = 0;
}

}  // namespace anetrain::buffers
