// Fusion of ranged steps: a run of consecutive element-wise / softmax / row-reduction steps over
// one index space becomes a single step that walks the space tile by tile and, within a tile,
// runs every op of the run in plan order. Op by op, each op of such a chain streams whole
// tensors (MBs) through L3 or DRAM and starts its own parallel region; tile by tile, what one op
// writes is still in L2 when the next reads it, and the run costs one parallel region. An
// intermediate that no step after the run reads does not even go to its buffer: it lives in a
// per-thread scratch slot of one tile, so its memory traffic (write-allocate, write-back, and
// the later read) disappears; without that, fusion gained much less (docs/benchmarks.md).
//
// Every op still computes the values it would compute alone, so results are bitwise those of
// the unfused plan. That holds when, for each element an op of the run reads, the op of the run
// that writes that element has written it in an earlier position of the same tile, and no op of
// the run writes what an earlier one reads. can_join() checks this on the ops' accesses
// (plan.h: Ranged); buffers are SSA values, so the second condition never actually cuts a run.
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <new>
#include <numeric>
#include <queue>
#include <set>

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

// Byte ranges indexed by their start, so that finding those a range overlaps costs a lookup
// rather than a pass over all of them: a run or a program can hold tens of thousands, and a
// pass per op made fusion quadratic in the length of a chain.
// Disjoint ranges, each with a value (`unite` merges instead: only whether any overlaps counts).
template <class V>
class Ranges {
public:
    // Calls f(value) for every stored range overlapping [lo, hi) until f returns false;
    // returns false if it did.
    template <class F>
    bool each_overlap(const char* lo, const char* hi, F&& f) const {
        auto it = map_.upper_bound(lo);
        if (it != map_.begin()) --it;
        for (; it != map_.end() && it->first < hi; ++it)
            if (it->second.first > lo && !f(it->second.second)) return false;
        return true;
    }
    bool overlaps(const char* lo, const char* hi) const {
        return !each_overlap(lo, hi, [](const V&) { return false; });
    }
    // [lo, hi) must overlap no stored range.
    void insert(const char* lo, const char* hi, V v) { map_.emplace(lo, std::make_pair(hi, std::move(v))); }
    // Adds [lo, hi) merged with every range it overlaps or touches (values are dropped).
    void unite(const char* lo, const char* hi) {
        auto it = map_.upper_bound(lo);
        if (it != map_.begin() && std::prev(it)->second.first >= lo) --it;
        while (it != map_.end() && it->first <= hi) {
            lo = std::min(lo, it->first);
            hi = std::max(hi, it->second.first);
            it = map_.erase(it);
        }
        map_.emplace(lo, std::make_pair(hi, V{}));
    }
    void clear() { map_.clear(); }

private:
    std::map<const char*, std::pair<const char*, V>> map_;  // lo -> (hi, value)
};

struct Nothing {};

// The accesses of the ops of a run so far: its writes (disjoint, as can_join keeps them) with
// the index in the run of the op that writes each, and the union of its reads.
struct RunAccesses {
    Ranges<std::pair<Ranged::Access, size_t>> writes;
    Ranges<Nothing> reads;

    // Whether op m can follow the ops of the run in tiles of a multiple of `align` elements.
    // Pairs accepted earlier stay valid as the run grows: its alignment only grows to multiples.
    bool can_join(const Ranged& m, int64_t align) const {
        for (const auto& r : m.reads)  // m reads an earlier op's output: in the same tile only
            if (!writes.each_overlap(r.lo, r.hi, [&](const auto& w) { return same_elements(r, w.first, align); }))
                return false;
        for (size_t a = 0; a < m.writes.size(); ++a) {
            const auto& w = m.writes[a];
            if (reads.overlaps(w.lo, w.hi)) return false;   // m overwrites an earlier op's input
            if (writes.overlaps(w.lo, w.hi)) return false;  // both write it
            for (size_t b = 0; b < a; ++b)
                if (overlap(w, m.writes[b])) return false;  // (no op does: keeps `writes` disjoint)
        }
        return true;
    }
    void add(const Ranged& m, size_t index) {
        for (const auto& w : m.writes) writes.insert(w.lo, w.hi, {w, index});
        for (const auto& r : m.reads) reads.unite(r.lo, r.hi);
    }
};

// An intermediate of a run kept in scratch: slot `slot` holds the tile's part of `buffer`,
// whose element i lives at buffer[i / per].
struct Scratch {
    const void* buffer;
    int64_t per;
    size_t slot;
};

// The run's writes that no later step or the caller reads (`later`: the union of what steps
// after the run read), each given a scratch slot. A slot is reused once the last op of the run
// reading its previous buffer has run, so a tile's scratch stays small (the FFN backward's
// chain of 9 ops needs 4 slots).
std::vector<Scratch> scratch_slots(const std::vector<std::shared_ptr<const Ranged>>& run, const RunAccesses& acc,
                                   const Ranges<Nothing>& later, size_t* slots) {
    // last_reader[i][k]: the last op of the run reading what write k of op i writes
    std::vector<std::vector<size_t>> last_reader(run.size());
    for (size_t i = 0; i < run.size(); ++i) last_reader[i].assign(run[i]->writes.size(), i);
    for (size_t j = 0; j < run.size(); ++j)
        for (const auto& r : run[j]->reads)
            acc.writes.each_overlap(r.lo, r.hi, [&](const auto& w) {
                const size_t i = w.second;
                if (i < j)
                    for (size_t k = 0; k < run[i]->writes.size(); ++k)
                        if (run[i]->writes[k].lo == w.first.lo) last_reader[i][k] = j;
                return true;
            });
    std::vector<Scratch> out;
    std::vector<size_t> free_after;  // per slot: index in the run of the last op reading it
    // Slots whose last reader has run, lowest first, and busy ones by when they become free.
    std::set<size_t> free;
    std::priority_queue<std::pair<size_t, size_t>, std::vector<std::pair<size_t, size_t>>, std::greater<>> busy;
    for (size_t i = 0; i < run.size(); ++i) {
        for (; !busy.empty() && busy.top().first < i; busy.pop()) free.insert(busy.top().second);
        for (size_t k = 0; k < run[i]->writes.size(); ++k) {
            const auto& w = run[i]->writes[k];
            if (w.per == 0 || later.overlaps(w.lo, w.hi)) continue;  // left in its buffer
            size_t slot;
            if (free.empty()) {
                slot = free_after.size();
                free_after.push_back(0);
            } else {
                slot = *free.begin();
                free.erase(free.begin());
            }
            free_after[slot] = last_reader[i][k];
            busy.push({free_after[slot], slot});
            out.push_back({w.base, w.per, slot});
        }
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
                size_t slots, const AddressMap* feeds) {
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
            AddressMap tl;  // this tile's scratch slots, then the in-place inputs
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

std::vector<FusedRun> fuse_plan(const std::vector<PlanStep>& plan, const std::vector<Use>& uses, const AddressMap* feeds) {
    struct Run {
        size_t first, last;
        std::vector<std::shared_ptr<const Ranged>> ops;
        int64_t align;
        RunAccesses acc;
    };
    std::vector<Run> found;
    for (size_t i = 0; i < plan.size();) {
        const Ranged* first = plan[i].ranged.get();
        if (!first || first->numel == 0 || first->align > kMaxAlign) {
            ++i;
            continue;
        }
        Run run{i, i + 1, {plan[i].ranged}, first->align, {}};
        run.acc.add(*first, 0);
        for (; run.last < plan.size() && plan[run.last].ranged; ++run.last) {
            const Ranged& m = *plan[run.last].ranged;
            const int64_t a = std::lcm(run.align, m.align);
            if (m.numel != first->numel || a > kMaxAlign || !run.acc.can_join(m, a)) break;
            run.acc.add(m, run.ops.size());
            run.ops.push_back(plan[run.last].ranged);
            run.align = a;
        }
        i = run.last;
        if (run.ops.size() >= 2) found.push_back(std::move(run));
    }
    // What steps after each run read, gathered from the last run back so that each use is
    // added once: a run's `later` holds the uses at or after its end.
    std::vector<size_t> by_step(uses.size());
    std::iota(by_step.begin(), by_step.end(), size_t(0));
    std::sort(by_step.begin(), by_step.end(), [&](size_t a, size_t b) { return uses[a].step > uses[b].step; });
    Ranges<Nothing> later;
    size_t next_use = 0;
    std::vector<FusedRun> runs(found.size());
    for (size_t r = found.size(); r-- > 0;) {
        Run& run = found[r];
        for (; next_use < by_step.size() && uses[by_step[next_use]].step >= run.last; ++next_use)
            later.unite(uses[by_step[next_use]].lo, uses[by_step[next_use]].hi);
        size_t slots = 0;
        std::vector<Scratch> scratch = scratch_slots(run.ops, run.acc, later, &slots);
        runs[r] = {run.first, run.last, tiled_step(std::move(run.ops), run.align, std::move(scratch), slots, feeds)};
    }
    return runs;
}

}  // namespace anetrain::backend::ref
