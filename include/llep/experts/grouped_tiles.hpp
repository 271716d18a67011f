#pragma once
// The tile scheduler of a grouped GEMM whose task sizes live in device memory: thread
// block b of a grid sized from host bounds finds the (task, row tile) it computes, or that
// it has none. Tasks are cut into row tiles of `tile_rows`; tiles are numbered task by task
// (task 0's tiles first). A block reads the task rows a chunk at a time, forms the
// inclusive prefix sums of (tiles, rows) over the chunk with a `Scan` (sequential on the
// host, a block-wide scan in the kernel) and binary-searches its tile there. The same
// routine runs in the kernel and in the host tests (tests/experts/test_grouped_tiles.cpp).
#include <cstdint>

#include "llep/core/config.hpp"

namespace llep {

/// Tiles and rows of a run of tasks: the element the scan sums.
struct TileCount {
  count_t tiles = 0;
  count_t rows = 0;
};

/// One block's work: rows [row_begin, row_begin + rows) of task `task`, whose first row is
/// row `row_offset` of all tasks' rows laid back to back in task order. task = -1: none.
struct TileSlot {
  int task = -1;
  count_t row_begin = 0;
  count_t rows = 0;
  count_t row_offset = 0;
};

struct GroupedTiles {
  int tile_rows = 1;

  /// Row tiles of a task of `rows` rows (none for rows <= 0).
  LLEP_HOST_DEVICE constexpr count_t tiles_of(count_t rows) const {
    return rows > 0 ? (rows + tile_rows - 1) / tile_rows : 0;
  }

  /// Blocks that always suffice for at most `max_tasks` tasks of at most `max_task_rows`
  /// rows and `max_rows` rows in all. With n tasks of r_i rows and R = sum r_i <= max_rows:
  /// sum ceil(r_i / B) <= sum (r_i + B - 1) / B < R / B + n, and an integer below
  /// R / B + n is at most floor(R / B) + n; also each task has at most
  /// ceil(max_task_rows / B) tiles. The smaller of the two bounds.
  LLEP_HOST_DEVICE constexpr count_t grid_bound(int max_tasks, count_t max_rows, count_t max_task_rows) const {
    if (max_tasks <= 0 || max_rows <= 0 || max_task_rows <= 0) return 0;
    const count_t by_rows = max_rows / tile_rows + max_tasks;
    const count_t by_tasks = static_cast<count_t>(max_tasks) * tiles_of(max_task_rows);
    return by_rows < by_tasks ? by_rows : by_tasks;
  }

  /// The slot of tile number `tile` among the first `count` tasks (rows_of(i) gives task
  /// i's rows, negatives count as 0). `prefix` holds `chunk` entries; `scan(base, n,
  /// prefix)` must fill prefix[0, n) with the inclusive sums of {tiles_of(rows), rows} of
  /// tasks [base, base + n) and return prefix[n - 1]. In a kernel every thread of the
  /// block calls this with the same arguments (the scan synchronises the block).
  LLEP_EXEC_CHECK_DISABLE
  template <class RowsOf, class Scan>
  LLEP_HOST_DEVICE TileSlot find(RowsOf rows_of, int count, count_t tile, int chunk, TileCount* prefix,
                                 Scan scan) const {
    TileCount carry;
    for (int base = 0; base < count; base += chunk) {
      const int n = count - base < chunk ? count - base : chunk;
      const TileCount total = scan(base, n, prefix);
      if (tile < carry.tiles + total.tiles) {
        const count_t local = tile - carry.tiles;
        int lo = 0, hi = n - 1;  // the first i with prefix[i].tiles > local
        while (lo < hi) {
          const int mid = lo + (hi - lo) / 2;
          if (prefix[mid].tiles > local) hi = mid;
          else lo = mid + 1;
        }
        const TileCount before = lo > 0 ? prefix[lo - 1] : TileCount{};
        const count_t rows = rows_of(base + lo);
        TileSlot s;
        s.task = base + lo;
        s.row_begin = (local - before.tiles) * tile_rows;
        s.rows = rows - s.row_begin < tile_rows ? rows - s.row_begin : tile_rows;
        s.row_offset = carry.rows + before.rows;
        return s;
      }
      carry.tiles += total.tiles;
      carry.rows += total.rows;
    }
    return TileSlot{};
  }
};

/// The scan of GroupedTiles::find on one thread (host tests, host code).
template <class RowsOf>
struct SequentialTileScan {
  RowsOf rows_of;
  GroupedTiles tiles;
  LLEP_EXEC_CHECK_DISABLE
  LLEP_HOST_DEVICE TileCount operator()(int base, int n, TileCount* prefix) const {
    TileCount run;
    for (int i = 0; i < n; ++i) {
      const count_t r = rows_of(base + i);
      run.tiles += tiles.tiles_of(r);
      run.rows += r > 0 ? r : 0;
      prefix[i] = run;
    }
    return run;
  }
};

}  // namespace llep
