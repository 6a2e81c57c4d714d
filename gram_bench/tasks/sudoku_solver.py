"""Fast 9x9 Sudoku solver, difficulty rating and unique-puzzle generator.

Grids are numpy uint8 arrays of shape [81], row-major, 0 = blank and 1..9 = digits.

Solver: each cell holds a candidate mask (one bit per digit). Constraint propagation
applies naked singles (a cell with one candidate removes it from its 20 peers) and hidden
singles (a digit with one possible cell in a row, column or box goes there) until nothing
changes; then a depth-first search branches on the unsolved cell with the fewest candidates
(ties: lowest index), trying its digits in ascending order (or in a shuffled order when an
rng is given), propagating after each guess.

Rating: the number of backtracks of that deterministic search stopped at the first solution,
where a backtrack is a guess (cell := digit) that is undone because no solution lies below it
(its propagation, or the whole search under it, ends in contradiction). Rating 0 means the
search never had to retract a guess, e.g. singles alone solve the puzzle. This follows the
spirit of the tdoku backtrack count used to rate the Sudoku-Extreme data; the numbers are not
identical to tdoku's, whose propagation and branching differ. `solve` counts backtracks the
same way for its own `limit`: with the default limit=2 the search goes on past the first
solution to rule out a second one, so the count is larger (AI Escargot: rating 7, while
`solve(limit=2)` reports 134).

Generator: a random full grid (the empty grid solved with shuffled digit order: varied, though
not exactly uniform over all grids), then the 81 cells in a random order, removing each clue
whose removal keeps the solution unique, which gives a minimal puzzle. Clue (c, v) is
removable iff the puzzle without it has no solution with cell c != v: one search with cell c
restricted to the other digits, stopped at its first solution. `generate` draws puzzle i from
np.random.default_rng([seed, i]), so each index is reproducible on its own.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from operator import and_, itemgetter, or_

import numpy as np

# A candidate mask holds digit d in bit 5 * (d - 1): summing the masks of a unit's nine cells
# then counts, in one 5-bit field per digit, the cells where each digit is still possible.
_BIT: tuple[int, ...] = tuple(1 << (5 * d) for d in range(9))
_FULL = sum(_BIT)
_HIGH = _FULL << 4  # the top bit of every field
_AT_LEAST_1 = 15 * _FULL  # added to a unit sum, sets a field's top bit iff its count is >= 1
_AT_LEAST_2 = 14 * _FULL  # ... iff its count is >= 2 (counts are <= 9, so no field overflows)

_ROWS = tuple(tuple(r * 9 + c for c in range(9)) for r in range(9))
_COLS = tuple(tuple(r * 9 + c for r in range(9)) for c in range(9))
_BOXES = tuple(
    tuple((br * 3 + r) * 9 + bc * 3 + c for r in range(3) for c in range(3))
    for br in range(3) for bc in range(3)
)
_UNITS: tuple[tuple[int, ...], ...] = _ROWS + _COLS + _BOXES
_UNIT_GET = tuple(itemgetter(*unit) for unit in _UNITS)
_CELL_UNITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(u for u, unit in enumerate(_UNITS) if c in unit) for c in range(81)
)
_CELL_UNIT_GET = tuple(itemgetter(*(units[k] for units in _CELL_UNITS)) for k in range(3))
_CELL_UNIT_BITS: tuple[int, ...] = tuple(sum(1 << u for u in units) for units in _CELL_UNITS)
_ALL_UNITS = (1 << 27) - 1
_PEERS: tuple[tuple[int, ...], ...] = tuple(
    tuple(sorted({p for u in _CELL_UNITS[c] for p in _UNITS[u]} - {c})) for c in range(81)
)
_OPTIONS: dict[int, tuple[int, ...]] = {
    sum(_BIT[d] for d in range(9) if m >> d & 1): tuple(_BIT[d] for d in range(9) if m >> d & 1)
    for m in range(512)
}
_DIGIT_OF: dict[int, int] = {b: d + 1 for d, b in enumerate(_BIT)}
_SIZE: dict[int, int] = {m: len(bits) for m, bits in _OPTIONS.items()}
_SINGLE = frozenset(_BIT)
_GIVEN_MASK: tuple[int, ...] = (0,) + _BIT  # digit -> its mask; 0 (blank) -> none
_BLANK_MASK: tuple[int, ...] = (_FULL,) + (0,) * 9  # 0 (blank) -> all digits; a digit -> none

_CELL_VALUES = frozenset(range(10))

State = tuple[list[int], list[int]]  # (candidate mask per cell, digits placed per unit)


def _propagate(cands: list[int], placed: list[int], stack: list[int], dirty: int) -> bool:
    """Apply naked and hidden singles in place until nothing changes. `stack` holds the solved
    cells not yet removed from their peers' candidates nor recorded in `placed`; `dirty` has bit
    u set for each unit u that may hold a hidden single. False on a contradiction (a cell
    without candidates, a digit without a cell in some unit)."""
    peers, cell_units, unit_bits = _PEERS, _CELL_UNITS, _CELL_UNIT_BITS
    units, unit_get = _UNITS, _UNIT_GET
    high, at_least_1, at_least_2 = _HIGH, _AT_LEAST_1, _AT_LEAST_2
    push = stack.append
    while True:
        while stack:
            c = stack.pop()
            m = cands[c]
            for u in cell_units[c]:
                placed[u] |= m
            for p in peers[c]:
                pm = cands[p]
                if pm & m:
                    pm ^= m
                    if not pm:
                        return False
                    cands[p] = pm
                    dirty |= unit_bits[p]
                    if not pm & (pm - 1):
                        push(p)
        while dirty:
            low = dirty & -dirty
            dirty ^= low
            u = low.bit_length() - 1
            counts = sum(unit_get[u](cands))
            ge1 = counts + at_least_1
            if ge1 & high != high:
                return False
            hidden = (ge1 & ~(counts + at_least_2) & high) >> 4 & ~placed[u]
            if hidden:
                for c in units[u]:
                    m = cands[c]
                    h = m & hidden
                    if h:
                        if h & (h - 1):
                            return False
                        if h != m:
                            cands[c] = h
                            dirty |= unit_bits[c]
                            push(c)
        if not stack:
            return True


def _search(cands: list[int], placed: list[int], limit: int,
            rng: np.random.Generator | None) -> tuple[list[list[int]], int]:
    """Solutions (candidate-mask lists, at most `limit`) below a propagated state, and the
    number of backtracks."""
    sols: list[list[int]] = []
    backtracks = 0
    size_of = _SIZE.__getitem__

    def dfs(state: list[int], state_placed: list[int]) -> None:
        nonlocal backtracks
        sizes = list(map(size_of, state))
        for n in range(2, 10):
            if n in sizes:
                best = sizes.index(n)
                break
        else:
            sols.append(state)
            return
        options = _OPTIONS[state[best]]
        if rng is not None:
            options = tuple(options[i] for i in rng.permutation(len(options)).tolist())
        for bit in options:
            child, child_placed = state[:], state_placed[:]
            child[best] = bit
            found = len(sols)
            if _propagate(child, child_placed, [best], _CELL_UNIT_BITS[best]):
                dfs(child, child_placed)
            if len(sols) >= limit:
                return
            if len(sols) == found:
                backtracks += 1

    dfs(cands, placed)
    return sols, backtracks


def _start(values: list[int], cell: int = -1, not_digit: int = 0) -> State | None:
    """Propagated state of a grid with valid givens (a list of 81 digits), optionally with blank
    `cell` barred from `not_digit`; None if propagation finds a contradiction."""
    givens = list(map(_GIVEN_MASK.__getitem__, values))
    placed = [sum(get(givens)) for get in _UNIT_GET]
    free = [_FULL ^ m for m in placed]
    row, col, box = (get(free) for get in _CELL_UNIT_GET)
    blank = map(_BLANK_MASK.__getitem__, values)
    open_ = list(map(and_, map(and_, row, col), map(and_, box, blank)))  # 0 on givens
    if cell >= 0:
        open_[cell] &= ~_BIT[not_digit - 1]
    if open_.count(0) != 81 - values.count(0):
        return None
    stack = [c for c, m in enumerate(open_) if m in _SINGLE]
    cands = list(map(or_, givens, open_))
    return (cands, placed) if _propagate(cands, placed, stack, _ALL_UNITS) else None


def _givens_valid(values: list[int]) -> bool:
    """No digit appears twice in a row, column or box."""
    for unit in _UNITS:
        digits = [values[c] for c in unit if values[c]]
        if len(digits) != len(set(digits)):
            return False
    return True


def _as_values(grid) -> list[int]:
    """A grid as a list of 81 Python ints, checked."""
    values = np.asarray(grid).reshape(-1).tolist()
    if len(values) != 81 or any(v not in _CELL_VALUES for v in values):
        raise ValueError("a grid is 81 cells holding 0 (blank) or a digit 1..9")
    return [int(v) for v in values]


def _solve_values(values: list[int], limit: int,
                  rng: np.random.Generator | None) -> tuple[list[list[int]], int]:
    """Solutions as digit lists, and backtracks, of a grid given as a list of 81 digits."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    state = _start(values) if _givens_valid(values) else None
    if state is None:
        return [], 0
    sols, backtracks = _search(*state, limit, rng)
    return [[_DIGIT_OF[m] for m in s] for s in sols], backtracks


def solve(grid, limit: int = 2,
          rng: np.random.Generator | None = None) -> tuple[list[np.ndarray], int]:
    """Solutions of `grid` (up to `limit`, each a [81] uint8 array) and the backtracks needed.
    With `rng` the digit order at each branch is shuffled; without it, ascending. Invalid givens
    (a digit twice in a unit) give ([], 0)."""
    sols, backtracks = _solve_values(_as_values(grid), limit, rng)
    return [np.array(s, dtype=np.uint8) for s in sols], backtracks


def count_solutions(grid, limit: int = 2) -> int:
    """Number of solutions of `grid`, counting no further than `limit`."""
    return len(solve(grid, limit)[0])


def rating(grid) -> int:
    """Backtracks of the deterministic search stopped at the first solution."""
    return solve(grid, limit=1)[1]


def is_valid_solution(grid) -> bool:
    """True iff `grid` is full and every row, column and box holds 1..9 once."""
    values = np.asarray(grid).reshape(-1).tolist()
    if len(values) != 81:
        return False
    return all(sorted(values[c] for c in unit) == list(range(1, 10)) for unit in _UNITS)


def random_full_grid(rng: np.random.Generator) -> np.ndarray:
    """A random complete valid grid: the empty grid solved with shuffled digit order."""
    sols, _ = _solve_values([0] * 81, 1, rng)
    return np.array(sols[0], dtype=np.uint8)


def _has_other_solution(values: list[int], cell: int, digit: int) -> bool:
    """Whether `values` (with `cell` blank) has a solution where `cell` is not `digit`."""
    state = _start(values, cell, digit)
    return state is not None and bool(_search(*state, 1, None)[0])


def _minimal_puzzle(solution: list[int], order: list[int]) -> list[int]:
    """Remove clues of `solution` in `order`, each only if the solution stays unique."""
    puzzle = solution[:]
    for c in order:
        puzzle[c] = 0
        if _has_other_solution(puzzle, c, solution[c]):
            puzzle[c] = solution[c]
    return puzzle


def make_puzzle(rng: np.random.Generator, min_rating: int = 0,
                max_tries: int = 50) -> tuple[np.ndarray, np.ndarray, int]:
    """(puzzle, solution, rating) of a minimal unique puzzle with rating >= min_rating, drawing
    a new full grid per try; ValueError after `max_tries` tries. Deterministic given `rng`."""
    for _ in range(max_tries):
        solution = random_full_grid(rng).tolist()
        puzzle = _minimal_puzzle(solution, rng.permutation(81).tolist())
        r = _solve_values(puzzle, 1, None)[1]
        if r >= min_rating:
            return np.array(puzzle, dtype=np.uint8), np.array(solution, dtype=np.uint8), r
    raise ValueError(f"min_rating={min_rating} is too high: no puzzle reached it in {max_tries} tries")


def _generate_one(args: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Puzzle `index` of `seed` (module level, so a spawned worker can unpickle it)."""
    seed, index, min_rating = args
    return make_puzzle(np.random.default_rng([seed, index]), min_rating)


def generate(seed: int, count: int, min_rating: int = 0, start: int = 0, workers: int = 1,
             progress: Callable[[int, int], None] | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Puzzles [count, 81], solutions [count, 81] (uint8) and ratings [count] (int32); puzzle i
    comes from np.random.default_rng([seed, start + i]), so results do not depend on `count`,
    `start` or `workers`. `progress(done, total)` is called as puzzles complete. workers > 1
    uses a spawn Pool, so a calling script needs the `if __name__ == "__main__":` guard."""
    puzzles = np.zeros((count, 81), dtype=np.uint8)
    solutions = np.zeros((count, 81), dtype=np.uint8)
    ratings = np.zeros(count, dtype=np.int32)
    jobs = [(seed, start + i, min_rating) for i in range(count)]

    def store(i: int, result: tuple[np.ndarray, np.ndarray, int]) -> None:
        puzzles[i], solutions[i], ratings[i] = result
        if progress is not None:
            progress(i + 1, count)

    if workers <= 1 or count <= 1:
        for i, job in enumerate(jobs):
            store(i, _generate_one(job))
    else:
        chunk = max(1, min(16, count // (4 * workers)))
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for i, result in enumerate(pool.imap(_generate_one, jobs, chunksize=chunk)):
                store(i, result)
    return puzzles, solutions, ratings
