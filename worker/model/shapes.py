"""Call shapes from a short series, for captured graphs (COMPILE_MODE=reduce-overhead).

A CUDA graph replays one fixed shape: every new ``rows x width`` is captured
again (memory, and a slow call), and an unbounded set of shapes never stops
capturing. Rounding each call's rows and width up to a short series bounds
the number of graphs, as vLLM does with its capture sizes: powers of two and
the midpoints between them (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, ...). That
is about two sizes per doubling, so at most ~18 widths up to 512 and ~18 row
counts up to 512, and rounding up adds under a half (about a sixth on
average) on each axis.

The planner cuts batches on bucketed widths, so its costs include the
rounding; the extra rows of a call repeat its first row and their outputs are
dropped.
"""

from __future__ import annotations


def bucket(n: int) -> int:
    """The smallest size of the series (1, 2, 3, 4, 6, 8, 12, 16, ...) that holds ``n``."""
    if n <= 2:
        return max(n, 1)
    power = 1 << (n - 1).bit_length()  # the power of two at or above n
    middle = power // 2 + power // 4
    return middle if n <= middle else power


def bucket_width(width: int, max_width: int) -> int:
    """A call's padded width: bucketed, never past the model's token limit."""
    return min(bucket(width), max(width, max_width))


def bucket_rows(rows: int, width: int, max_rows: int, max_tokens: int) -> int:
    """A call's row count: bucketed, within the row and token budgets where the rows fit them."""
    room = max(rows, min(max_rows, max_tokens // width if width else max_rows))
    return min(bucket(rows), room)
