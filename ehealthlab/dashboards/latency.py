"""Latency percentiles from histograms: the rollups keep, per hour, how many readings took at
most each of a fixed set of bounds from measurement to storage (migration 0022, columns
``le_<bound>s``), so a panel over a year sums a few thousand rows instead of sorting millions
of readings. A percentile is then estimated the way Prometheus' ``histogram_quantile`` does:
linear interpolation inside the bucket that holds it. The estimate is exact at the bounds and
off by at most the width of the bucket in between; panels say so.

`histogram_quantile` is the reference; `quantile_sql` writes the same computation for
PostgreSQL, and the tests hold the two to each other.
"""

from __future__ import annotations

from collections.abc import Sequence

#: the histogram's upper bounds in seconds (migration 0022's columns, in this order); a reading
#: above the last is counted only in the rollup's `readings`
LATENCY_BOUNDS_S: tuple[int, ...] = (
    0, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400, 259200,
)  # fmt: skip
COLUMNS: tuple[str, ...] = tuple(f"le_{bound}s" for bound in LATENCY_BOUNDS_S)


def histogram_quantile(q: float, cumulative: Sequence[int], total: int) -> float | None:
    """The q-quantile (0 <= q <= 1) of a histogram given as counts at or below each of
    `LATENCY_BOUNDS_S` and the total; None when it is empty. At or below the first bound it
    is the first bound; beyond the last, the last bound (the histogram knows no more)."""
    if len(cumulative) != len(LATENCY_BOUNDS_S):
        raise ValueError(f"{len(cumulative)} counts for {len(LATENCY_BOUNDS_S)} bounds")
    if total <= 0:
        return None
    rank = q * total
    for i, (bound, count) in enumerate(zip(LATENCY_BOUNDS_S, cumulative, strict=True)):
        if count >= rank:
            if i == 0:
                return float(bound)
            lower, below = LATENCY_BOUNDS_S[i - 1], cumulative[i - 1]
            if count == below:
                return float(bound)
            return lower + (bound - lower) * (rank - below) / (count - below)
    return float(LATENCY_BOUNDS_S[-1])


def sums_sql(source: str = "") -> str:
    """``sum(le_0s) AS le_0s, ...``: a group's histogram from rollup rows (`source`: a table
    alias and dot, or nothing)."""
    return ",\n       ".join(f"sum({source}{c}) AS {c}" for c in COLUMNS)


def counts_sql(latency_s: str) -> str:
    """``count(*) FILTER (WHERE <latency> <= 0) AS le_0s, ...``: the same histogram from raw
    readings, so a panel's two branches estimate alike."""
    return ",\n       ".join(
        f"count(*) FILTER (WHERE {latency_s} <= {bound}) AS {column}"
        for bound, column in zip(LATENCY_BOUNDS_S, COLUMNS, strict=True)
    )


def quantile_sql(q: float, row: str, total: str = "readings") -> str:
    """An SQL expression for `histogram_quantile(q, ...)` of the histogram in the columns of
    `row` (a relation alias) with `total` readings in all: NULL when it is empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    if not (row.isidentifier() and total.isidentifier()):
        raise ValueError(f"{row!r} and {total!r} must be SQL identifiers")
    bounds = ", ".join(str(b) for b in LATENCY_BOUNDS_S)
    counts = ", ".join(f"{row}.{c}" for c in COLUMNS)
    rank = f"{q!r} * {row}.{total}"
    return f"""CASE WHEN {row}.{total} > 0 THEN coalesce((
    SELECT CASE WHEN b.i = 1 OR b.cum = b.below THEN b.bound
                ELSE b.lower + (b.bound - b.lower) * ({rank} - b.below) / (b.cum - b.below)
           END
    FROM (
        SELECT u.i, u.bound, u.cum,
               lag(u.bound) OVER (ORDER BY u.i) AS lower,
               lag(u.cum) OVER (ORDER BY u.i) AS below
        FROM unnest(ARRAY[{bounds}]::float8[], ARRAY[{counts}]::float8[])
             WITH ORDINALITY u(bound, cum, i)
    ) b
    WHERE b.cum >= {rank}
    ORDER BY b.i
    LIMIT 1), {float(LATENCY_BOUNDS_S[-1])!r}) END"""  # noqa: S608 (identifiers checked)
