"""Sudoku solver and generator: known puzzles, solution counts against an independent
exhaustive counter, reproducibility of `generate`, and the rating filter."""

from __future__ import annotations

import numpy as np
import pytest

from gram_bench.tasks.sudoku_solver import (
    count_solutions,
    generate,
    is_valid_solution,
    make_puzzle,
    random_full_grid,
    rating,
    solve,
)

ESCARGOT = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."
ESCARGOT_SOLUTION = "162857493534129678789643521475312986913586742628794135356478219241935867897261354"


def parse(text: str) -> np.ndarray:
    return np.array([0 if ch == "." else int(ch) for ch in text], dtype=np.uint8)


def brute_force_count(grid, limit: int = 2) -> int:
    """Solutions of `grid` counted up to `limit` by plain backtracking: no propagation, only the
    row/column/box test of each digit, filling the blank cell with the fewest legal digits."""
    cells = [int(v) for v in np.asarray(grid).reshape(-1)]
    rows = [set() for _ in range(9)]
    cols = [set() for _ in range(9)]
    boxes = [set() for _ in range(9)]
    for i, v in enumerate(cells):
        if v:
            r, c, b = i // 9, i % 9, (i // 27) * 3 + (i % 9) // 3
            if v in rows[r] or v in cols[c] or v in boxes[b]:
                return 0
            rows[r].add(v)
            cols[c].add(v)
            boxes[b].add(v)
    blanks = [i for i, v in enumerate(cells) if not v]

    def legal(i: int) -> list[int]:
        r, c, b = i // 9, i % 9, (i // 27) * 3 + (i % 9) // 3
        return [v for v in range(1, 10) if v not in rows[r] and v not in cols[c] and v not in boxes[b]]

    def count(open_cells: list[int]) -> int:
        if not open_cells:
            return 1
        best = min(open_cells, key=lambda i: len(legal(i)))
        rest = [i for i in open_cells if i != best]
        r, c, b = best // 9, best % 9, (best // 27) * 3 + (best % 9) // 3
        found = 0
        for v in legal(best):
            rows[r].add(v)
            cols[c].add(v)
            boxes[b].add(v)
            found += count(rest)
            rows[r].discard(v)
            cols[c].discard(v)
            boxes[b].discard(v)
            if found >= limit:
                break
        return found

    return min(count(blanks), limit)


def brute_force_is_solution(grid) -> bool:
    g = np.asarray(grid).reshape(9, 9)
    boxes = g.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    digits = list(range(1, 10))
    return all(sorted(line.tolist()) == digits for part in (g, g.T, boxes) for line in part)


@pytest.fixture(scope="module")
def generated():
    return generate(seed=0, count=20)


def test_escargot_is_solved_uniquely():
    puzzle = parse(ESCARGOT)
    sols, backtracks = solve(puzzle)
    assert len(sols) == 1
    sol = sols[0]
    assert sol.dtype == np.uint8 and sol.shape == (81,)
    assert "".join(map(str, sol.tolist())) == ESCARGOT_SOLUTION
    assert is_valid_solution(sol) and brute_force_is_solution(sol)
    assert (sol[puzzle > 0] == puzzle[puzzle > 0]).all()
    assert brute_force_count(puzzle) == 1
    assert (backtracks, rating(puzzle)) == (134, 7)  # pins the backtrack definition


def test_several_solutions_are_counted():
    grid = parse(ESCARGOT_SOLUTION)
    grid[:18] = 0  # rows 0 and 1 lie in one band: swapping them gives a second solution
    assert count_solutions(grid, limit=2) == 2
    assert brute_force_count(grid, limit=2) == 2
    sols, _ = solve(grid, limit=2)
    assert len(sols) == 2 and not (sols[0] == sols[1]).all()
    assert all(is_valid_solution(s) and (s[18:] == grid[18:]).all() for s in sols)
    assert count_solutions(np.zeros(81, np.uint8), limit=5) == 5


def test_contradictions_have_no_solution():
    duplicate = np.zeros(81, np.uint8)
    duplicate[[0, 5]] = 4  # two 4s in row 0
    assert solve(duplicate) == ([], 0)
    assert count_solutions(duplicate) == 0
    dead_end = np.zeros(81, np.uint8)
    dead_end[:8] = np.arange(1, 9)  # row 0 needs a 9 in column 8 ...
    dead_end[4 * 9 + 8] = 9  # ... which already holds one
    assert count_solutions(dead_end) == 0
    assert brute_force_count(dead_end) == 0


def test_bad_grids_are_rejected():
    with pytest.raises(ValueError):
        solve(np.zeros(80, np.uint8))
    with pytest.raises(ValueError):
        solve(np.full(81, 10, np.uint8))
    full = parse(ESCARGOT_SOLUTION)
    assert is_valid_solution(full)
    swapped = full.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert not is_valid_solution(swapped)
    assert not is_valid_solution(parse(ESCARGOT))


def test_singles_only_puzzle_has_rating_zero():
    grid = parse(ESCARGOT_SOLUTION)
    grid[::7] = 0
    assert rating(grid) == 0
    assert solve(grid)[0][0].tolist() == parse(ESCARGOT_SOLUTION).tolist()


def test_random_full_grid():
    a = random_full_grid(np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == (81,)
    assert is_valid_solution(a) and brute_force_is_solution(a)
    assert (random_full_grid(np.random.default_rng(1)) == a).all()
    assert not (random_full_grid(np.random.default_rng(2)) == a).all()


def test_generated_puzzles_are_unique(generated):
    puzzles, solutions, ratings = generated
    assert puzzles.shape == solutions.shape == (20, 81)
    assert puzzles.dtype == solutions.dtype == np.uint8 and ratings.dtype == np.int32
    for puzzle, solution, r in zip(puzzles, solutions, ratings):
        sols, backtracks = solve(puzzle, limit=1)
        assert len(sols) == 1 and (sols[0] == solution).all()
        assert brute_force_is_solution(solution)
        assert (solution[puzzle > 0] == puzzle[puzzle > 0]).all()
        assert backtracks == r == rating(puzzle)
        assert brute_force_count(puzzle) == 1
    assert len({p.tobytes() for p in puzzles}) == 20


def test_generated_puzzles_are_minimal(generated):
    for puzzle in generated[0][:3]:
        for cell in np.flatnonzero(puzzle):
            reduced = puzzle.copy()
            reduced[cell] = 0
            assert count_solutions(reduced) == 2


def test_generate_is_reproducible(generated):
    again = generate(seed=0, count=20)
    assert all((a == b).all() for a, b in zip(generated, again))
    other = generate(seed=1, count=3)
    assert not (other[0] == generated[0][:3]).all()
    window = generate(seed=0, count=5, start=3)
    assert all((w == g[3:8]).all() for w, g in zip(window, generated))


def test_generate_with_workers_matches_one_worker(generated):
    seen = []
    parallel = generate(seed=0, count=6, start=2, workers=2, progress=lambda d, t: seen.append((d, t)))
    assert all((p == g[2:8]).all() for p, g in zip(parallel, generated))
    assert seen == [(d, 6) for d in range(1, 7)]


def test_min_rating_filter():
    puzzles, _, ratings = generate(seed=3, count=3, min_rating=3)
    assert (ratings >= 3).all()
    assert [rating(p) for p in puzzles] == ratings.tolist()
    with pytest.raises(ValueError, match="min_rating=1000000"):
        make_puzzle(np.random.default_rng(0), min_rating=10 ** 6, max_tries=2)
