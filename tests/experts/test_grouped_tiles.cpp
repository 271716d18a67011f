// The grouped GEMM's tile scheduler (experts/grouped_tiles.hpp) on the host, with the
// sequential scan: over every block of the grid sized by grid_bound (and some beyond it),
// the blocks with work cover every (task, row tile) of the first `count` tasks exactly
// once, in task order, with the right rows and row offsets, and nothing else; grid_bound is
// never below the real tile count. Chunks of 1, 3, 7 and 256 tasks exercise the chunked
// scan's boundaries. Task lists: random, empty tasks, one huge task, many 1-row tasks, and
// a count below the array length (entries past it hold rows that must be ignored).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "llep/core/config.hpp"
#include "llep/experts/grouped_tiles.hpp"

namespace {

using llep::count_t;

struct Expected {
  int task;
  count_t row_begin, rows, row_offset;
};

// The tiles of the first `count` tasks, written out directly.
std::vector<Expected> expected_tiles(const std::vector<count_t>& rows, int count, int tile_rows) {
  std::vector<Expected> e;
  count_t offset = 0;
  for (int i = 0; i < count; ++i) {
    for (count_t r = 0; r < rows[static_cast<std::size_t>(i)]; r += tile_rows)
      e.push_back({i, r, std::min<count_t>(tile_rows, rows[static_cast<std::size_t>(i)] - r), offset});
    offset += rows[static_cast<std::size_t>(i)];
  }
  return e;
}

// Runs the scheduler for every block in [0, grid + 9) and checks the mapping. The bounds
// are the tightest true ones unless given.
void check_schedule(const std::vector<count_t>& rows, int count, int tile_rows, int chunk) {
  CAPTURE(count);
  CAPTURE(tile_rows);
  CAPTURE(chunk);
  const llep::GroupedTiles tiles{tile_rows};
  count_t total = 0, max_task = 0;
  for (int i = 0; i < count; ++i) total += rows[static_cast<std::size_t>(i)], max_task = std::max(max_task, rows[i]);
  const std::vector<Expected> want = expected_tiles(rows, count, tile_rows);
  const count_t grid = tiles.grid_bound(static_cast<int>(rows.size()), total, max_task);
  REQUIRE(grid >= static_cast<count_t>(want.size()));  // the grid is never too small
  // With the task count itself as max_tasks the bound still holds.
  REQUIRE(tiles.grid_bound(count, total, max_task) >= static_cast<count_t>(want.size()));

  auto rows_of = [&](int i) { return rows[static_cast<std::size_t>(i)]; };
  const llep::SequentialTileScan<decltype(rows_of)> scan{rows_of, tiles};
  std::vector<llep::TileCount> prefix(static_cast<std::size_t>(chunk));
  std::size_t mismatches = 0;
  for (count_t b = 0; b < grid + 9; ++b) {
    const llep::TileSlot s = tiles.find(rows_of, count, b, chunk, prefix.data(), scan);
    if (b < static_cast<count_t>(want.size())) {
      const Expected& e = want[static_cast<std::size_t>(b)];
      mismatches += s.task != e.task || s.row_begin != e.row_begin || s.rows != e.rows || s.row_offset != e.row_offset;
    } else {
      mismatches += s.task != -1;
    }
  }
  CHECK(mismatches == 0);
}

void check_all_chunks(const std::vector<count_t>& rows, int count, int tile_rows) {
  for (int chunk : {1, 3, 7, 256}) check_schedule(rows, count, tile_rows, chunk);
}

}  // namespace

TEST_CASE("grouped tiles: tiles_of and grid_bound") {
  const llep::GroupedTiles t{128};
  CHECK(t.tiles_of(0) == 0);
  CHECK(t.tiles_of(-5) == 0);
  CHECK(t.tiles_of(1) == 1);
  CHECK(t.tiles_of(128) == 1);
  CHECK(t.tiles_of(129) == 2);
  CHECK(t.grid_bound(0, 100, 100) == 0);
  CHECK(t.grid_bound(4, 0, 0) == 0);
  // 64 tasks of 1 row: 64 tiles, and the bound is exactly that.
  CHECK(t.grid_bound(64, 64, 1) == 64);
  // One task of 1000 rows: 8 tiles; the by-tasks bound is exact.
  CHECK(t.grid_bound(1, 1000, 1000) == 8);
}

TEST_CASE("grouped tiles: random task lists, every tile exactly once") {
  std::mt19937_64 rng(14);
  std::uniform_int_distribution<int> n_tasks(1, 40), tile_pick(0, 3), kind(0, 3);
  const int tile_choices[] = {1, 16, 64, 128};
  for (int trial = 0; trial < 300; ++trial) {
    const int n = n_tasks(rng), tile_rows = tile_choices[tile_pick(rng)];
    std::vector<count_t> rows(static_cast<std::size_t>(n));
    for (count_t& r : rows) {
      switch (kind(rng)) {
        case 0: r = 0; break;
        case 1: r = std::uniform_int_distribution<count_t>(1, 3)(rng); break;
        case 2: r = std::uniform_int_distribution<count_t>(1, 300)(rng); break;
        default: r = tile_rows * std::uniform_int_distribution<count_t>(1, 4)(rng); break;  // exact multiples
      }
    }
    const int count = std::uniform_int_distribution<int>(0, n)(rng);
    check_all_chunks(rows, count, tile_rows);
  }
}

TEST_CASE("grouped tiles: adversarial task lists") {
  SUBCASE("all tasks empty") { check_all_chunks(std::vector<count_t>(20, 0), 20, 128); }
  SUBCASE("no tasks") { check_all_chunks(std::vector<count_t>(5, 7), 0, 128); }
  SUBCASE("one huge task between empty ones") { check_all_chunks({0, 0, 1'000'003, 0}, 4, 128); }
  SUBCASE("max_tasks tasks of one row") { check_all_chunks(std::vector<count_t>(1000, 1), 1000, 128); }
  SUBCASE("count below the array length: later rows ignored") {
    std::vector<count_t> rows{5, 0, 300, 129, 1, 1000, 1000, 1000};
    check_all_chunks(rows, 3, 64);
    check_all_chunks(rows, 4, 128);
  }
  SUBCASE("an empty task at every chunk boundary") {
    std::vector<count_t> rows;
    for (int i = 0; i < 30; ++i) rows.push_back(i % 3 == 2 ? 0 : 130);
    check_all_chunks(rows, 30, 128);
  }
}
