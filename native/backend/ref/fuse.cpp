// Fusion of ranged steps: a run of consecutive element-wise / softmax / row-reduction steps over
// one index space becomes a single step that walks the space tile by tile and, within a tile,
// runs every op of the run in plan order. Op by op, each op of such a chain streams whole
// tensors (MBs) through L3 or DRAM and starts its own parallel region; tile by tile, what one op
// writes is still in L2 when the next reads it, and the run costs one parallel region.
//
// Every op still writes all of its output (and its sink) with the values it would write alone,
// so results are bitwise those of the unfused plan. That holds when, for each element an op of
// the run reads, the op of the run that writes that element has written it in an earlier
// position of the same tile, and no op of the run overwrites an element an earlier one still
// has to read in another tile. can_join() checks this on the ops' accesses (plan.h: Ranged).
#include <numeric>

#include "backend/ref/plan.h"

namespace anetrain::backend::ref {

namespace {

// Elements per tile. A run touches one tile of each of its buffers (up to a dozen in the FFN
// backward's chain), so 8K elements (32 KB per buffer) keeps a tile's working set well inside
// a 512 KB-1 MB L2, while each op's inner loop still gets long contiguous pieces.
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
        for (const auto& w : p->writes) {
            for (const auto& r : m.reads)
                if (overlap(r, w) && !same_elements(r, w, align)) return false;  // m reads p's output
            for (const auto& w2 : m.writes)
                if (overlap(w2, w)) return false;  // both write it
        }
        for (const auto& r : p->reads)
            for (const auto& w : m.writes)
                if (overlap(r, w) && !same_elements(r, w, align)) return false;  // m overwrites p's input
    }
    return true;
}

Step tiled_step(std::vector<std::shared_ptr<const Ranged>> ops, int64_t align) {
    const int64_t n = ops.front()->numel;
    const int64_t tile = std::max<int64_t>(1, kTile / align) * align;
    const int64_t tiles = (n + tile - 1) / tile;
    // A tile costs every op's work: that, not the tile alone, is what parallel_rows weighs
    // against the cost of a thread hop.
    const int64_t work = tile * int64_t(ops.size());
    return [ops = std::move(ops), n, tile, tiles, work] {
        parallel_rows(tiles, work, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t b = t * tile, e = std::min(n, b + tile);
                for (const auto& op : ops) op->run(b, e);
            }
        });
    };
}

}  // namespace

std::vector<FusedRun> fuse_plan(const std::vector<PlanStep>& plan) {
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
        if (run.size() >= 2) runs.push_back({i, j, tiled_step(std::move(run), align)});
        i = j;
    }
    return runs;
}

}  // namespace anetrain::backend::ref
