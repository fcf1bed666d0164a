// Fusion of ranged steps: a run of consecutive element-wise / softmax / row-reduction steps over
// one index space becomes a single step that walks the space tile by tile and, within a tile,
// runs every op of the run in plan order. Op by op, each op of such a chain streams whole
// tensors (MBs) through L3 or DRAM and starts its own parallel region; tile by tile, what one op
// writes is still in L2 when the next reads it, and the run costs one parallel region. An
// intermediate that no step after the run reads does not even go to its buffer: it lives in a
// per-thread scratch slot of one tile, so its memory traffic (write-allocate, write-back, and
// the later read) disappears; without that, fusion gained only 5-10%.
//
// Every op still computes the values it would compute alone, so results are bitwise those of
// the unfused plan. That holds when, for each element an op of the run reads, the op of the run
// that writes that element has written it in an earlier position of the same tile, and no op of
// the run writes what an earlier one reads. can_join() checks this on the ops' accesses
// (plan.h: Ranged); buffers are SSA values, so the second condition never actually cuts a run.
#include <cstdlib>
#include <new>
#include <numeric>

#include "backend/ref/plan.h"

namespace anetrain::backend::ref {

namespace {

// Elements per tile. A tile touches one tile of each buffer the run reads or keeps, plus its
// scratch slots: at 8K elements (32 KB per buffer) that stays well inside a 512 KB-1 MB L2,
// while each op's inner loop still gets long contiguous pieces. (2K-16K measured the same.)
constexpr int64_t kTile = 8192;
// Tiles are multiples of every op's alignment (softmax rows, reduced rows); an op needing
// longer rows than this is left to run alone.
constexpr int64_t kMaxAlign = int64_t(1) << 16;

bool overlap(const Ranged::Access& a, const Ranged::Access& b) { return a.lo < b.hi && b.lo < a.hi; }

// Whether two accesses to overlapping bytes reach the same element from every index and only
// from indices in the same tile (tiles are multiples of `align`): then the ops meet that
// element in one tile, in plan order.
bool same_elements(const Ranged::Access& a, const Ranged::Access& b, int64_t align) {
    return a.per != 0 && a.base == b.base && a.per == b.per && align % a.per == 0;
}

// Whether op m can follow the ops of `run` in tiles of a multiple of `align` elements.
bool can_join(const std::vector<std::shared_ptr<const Ranged>>& run, const Ranged& m, int64_t align) {
    if (m.numel != run.front()->numel || align > kMaxAlign) return false;
    for (const auto& p : run) {
        for (const auto& w : p->writes)
            for (const auto& r : m.reads)
                if (overlap(r, w) && !same_elements(r, w, align)) return false;  // m reads p's output
        for (const auto& w : m.writes) {
            for (const auto& r : p->reads)
                if (overlap(w, r)) return false;  // m overwrites p's input
            for (const auto& w2 : p->writes)
                if (overlap(w, w2)) return false;  // both write it
        }
    }
    return true;
}

// An intermediate of a run kept in scratch: slot `slot` holds the tile's part of `buffer`,
// whose element i lives at buffer[i / per].
struct Scratch {
    const void* buffer;
    int64_t per;
    size_t slot;
};

// The run's writes that no later step or the caller reads, each given a scratch slot. A slot
// is reused once the last op of the run reading its previous buffer has run, so a tile's
// scratch stays small (the FFN backward's chain of 9 ops needs 4 slots).
std::vector<Scratch> scratch_slots(const std::vector<std::shared_ptr<const Ranged>>& run, size_t last_step,
                                   const std::vector<Use>& uses, size_t* slots) {
    std::vector<Scratch> out;
    std::vector<size_t> free_after;  // per slot: index in the run of the last op reading it
    for (size_t i = 0; i < run.size(); ++i)
        for (const auto& w : run[i]->writes) {
            bool later = w.per == 0;  // not a per-element write (none is): left in its buffer
            for (const Use& u : uses) later = later || (u.step >= last_step && u.lo < w.hi && w.lo < u.hi);
            if (later) continue;
            size_t last_reader = i;
            for (size_t j = i + 1; j < run.size(); ++j)
                for (const auto& r : run[j]->reads)
                    if (overlap(r, w)) last_reader = j;
            size_t slot = 0;
            while (slot < free_after.size() && free_after[slot] >= i) ++slot;
            if (slot == free_after.size()) free_after.push_back(0);
            free_after[slot] = last_reader;
            out.push_back({w.base, w.per, slot});
        }
    *slots = free_after.size();
    return out;
}

// This thread's scratch, at least `bytes` long and 64-byte aligned. A thread runs the tiles of
// its chunk of a run one after another, so the scratch is free for each of them; it only grows,
// and every fused run on the thread reuses it.
void* thread_scratch(size_t bytes) {
    struct Space {
        void* p = nullptr;
        size_t bytes = 0;
        ~Space() { std::free(p); }
    };
    thread_local Space space;
    if (space.bytes < bytes) {
        std::free(space.p);
        space.p = std::malloc(bytes + 64);  // (std::aligned_alloc is missing on older macOS)
        if (!space.p) throw std::bad_alloc();
        space.bytes = bytes;
    }
    return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(space.p) + 63) & ~uintptr_t(63));
}

Step tiled_step(std::vector<std::shared_ptr<const Ranged>> ops, int64_t align, std::vector<Scratch> scratch,
                size_t slots, const Tile* feeds) {
    const int64_t n = ops.front()->numel;
    const int64_t tile = std::max<int64_t>(1, kTile / align) * align;
    const int64_t tiles = (n + tile - 1) / tile;
    const size_t slot_bytes = (size_t(tile) * 4 + 63) / 64 * 64;  // 4-byte elements; slots 64-byte aligned
    // A tile costs every op's work: that, not the tile alone, is what parallel_rows weighs
    // against the cost of a thread hop.
    const int64_t work = tile * int64_t(ops.size());
    return [ops = std::move(ops), scratch = std::move(scratch), n, tile, tiles, slot_bytes, slots, work, feeds] {
        parallel_rows(tiles, work, [&](int64_t t0, int64_t t1) {
            const uintptr_t base = reinterpret_cast<uintptr_t>(thread_scratch(slot_bytes * slots));
            Tile tl;
            tl.moved.resize(scratch.size());
            tl.moved.insert(tl.moved.end(), feeds->moved.begin(), feeds->moved.end());
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t b = t * tile, e = std::min(n, b + tile);
                // element i of a moved buffer is at slot + (i - b) / per: element 0 "is" at
                // slot - b / per (an address only ever offset back into the slot)
                for (size_t k = 0; k < scratch.size(); ++k) {
                    const Scratch& s = scratch[k];
                    const uintptr_t slot = base + s.slot * slot_bytes;
                    tl.moved[k] = {s.buffer, slot - uintptr_t(b / s.per) * 4};
                }
                for (const auto& op : ops) op->run(b, e, tl);
            }
        });
    };
}

}  // namespace

std::vector<FusedRun> fuse_plan(const std::vector<PlanStep>& plan, const std::vector<Use>& uses, const Tile* feeds) {
    std::vector<FusedRun> runs;
    for (size_t i = 0; i < plan.size();) {
        const Ranged* first = plan[i].ranged.get();
        if (!first || first->numel == 0 || first->align > kMaxAlign) {
            ++i;
            continue;
        }
        std::vector<std::shared_ptr<const Ranged>> run{plan[i].ranged};
        int64_t align = first->align;
        size_t j = i + 1;
        for (; j < plan.size() && plan[j].ranged; ++j) {
            const int64_t a = std::lcm(align, plan[j].ranged->align);
            if (!can_join(run, *plan[j].ranged, a)) break;
            run.push_back(plan[j].ranged);
            align = a;
        }
        if (run.size() >= 2) {
            size_t slots = 0;
            std::vector<Scratch> scratch = scratch_slots(run, j, uses, &slots);
            runs.push_back({i, j, tiled_step(std::move(run), align, std::move(scratch), slots, feeds)});
        }
        i = j;
    }
    return runs;
}

}  // namespace anetrain::backend::ref
