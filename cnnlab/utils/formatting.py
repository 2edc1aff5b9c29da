"""How cnnlab writes a shape in messages, tables and figure titles (one formatter).

    format_shape((1, 28, 28))                          -> "1x28x28"     (sizes, images)
    format_shape((64, 7, 7), ", ", brackets=True)      -> "(64, 7, 7)"  (summary tables)
    format_shape((64, 32, 3, 3), ",", brackets=True)   -> "(64,32,3,3)" (compact lists)
"""

from __future__ import annotations


def format_shape(shape, separator: str = "x", brackets: bool = False) -> str:
    """The sizes of ``shape`` joined by ``separator``, in parentheses with ``brackets``
    (a one-axis shape is "(3)", not Python's "(3,)")."""
    text = separator.join(str(int(size)) for size in shape)
    return f"({text})" if brackets else text
