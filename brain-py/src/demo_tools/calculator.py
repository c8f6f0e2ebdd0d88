"""A safe arithmetic evaluator.

Expressions come from an LLM, so they are untrusted: they are parsed with
:mod:`ast` and only a whitelist of node types is evaluated (never ``eval``).
Every step is bounded so that a short expression cannot burn CPU or memory
(``9**9**9``) or produce values JSON cannot carry (``inf``, complex numbers).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_EXPRESSION_CHARS = 200
"""Longest expression accepted; also bounds the depth of the syntax tree."""

MAX_EXPONENT = 100
"""Largest ``|exponent|`` for ``**``."""

MAX_MAGNITUDE_LOG10 = 308
"""Results are kept within float range (about 1.8e308), integers included."""

MAX_ROUND_DIGITS = 15
"""``round(x, n)`` with a huge ``n`` is slow for integers and pointless for floats."""

Number = int | float


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be evaluated; the message says why."""


_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}

_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _round(x: Number, ndigits: Number = 0) -> Number:
    if not isinstance(ndigits, int):
        raise CalculatorError("round(): the number of digits must be an integer")
    if abs(ndigits) > MAX_ROUND_DIGITS:
        raise CalculatorError(f"round(): at most {MAX_ROUND_DIGITS} digits")
    return round(x) if ndigits == 0 else round(x, ndigits)


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


# name -> (function, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1),
    "log": (_log, 1, 2),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, 20),
    "max": (max, 1, 20),
}

ALLOWED_NAMES = sorted([*_FUNCTIONS, *_CONSTANTS])
"""Every function and constant an expression may use, for error messages and docs."""


def evaluate(expression: str) -> Number:
    """Evaluates ``expression`` or raises :class:`CalculatorError` with a reason."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    if not expression.strip():
        raise CalculatorError("expression is empty")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"invalid syntax: {exc.msg}") from None
    except (ValueError, MemoryError, RecursionError):
        raise CalculatorError("expression cannot be parsed") from None
    try:
        value = _eval(tree.body)
        # JSON numbers beyond 2**53 lose precision in most parsers (and orjson
        # refuses integers beyond 64 bits), so big integers are sent as floats.
        return float(value) if isinstance(value, int) and abs(value) > 2**53 else value
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("result is too large") from None
    except RecursionError:
        raise CalculatorError("expression is nested too deeply") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, CalculatorError):
            raise
        raise CalculatorError(f"math error: {exc}") from None


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CalculatorError(f"only numbers are allowed, not {value!r}")
        return _checked(value)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        binary = _BINARY.get(type(node.op))
        if binary is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed")
        return _checked(binary(left, right))
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed")
        return _checked(unary(_eval(node.operand)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise CalculatorError(f"unknown name {node.id!r}; allowed: {', '.join(ALLOWED_NAMES)}")
    if isinstance(node, ast.Call):
        return _checked(_call(node))
    raise CalculatorError(f"{type(node).__name__} is not allowed in an expression")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        what = repr(node.func.id) if isinstance(node.func, ast.Name) else "this call"
        raise CalculatorError(
            f"{what} is not an allowed function; allowed: {', '.join(_FUNCTIONS)}"
        )
    if node.keywords:
        raise CalculatorError("keyword arguments are not allowed")
    if any(isinstance(arg, ast.Starred) for arg in node.args):
        raise CalculatorError("*args are not allowed")
    name = node.func.id
    function, min_args, max_args = _FUNCTIONS[name]
    if not min_args <= len(node.args) <= max_args:
        expected = str(min_args) if min_args == max_args else f"{min_args} to {max_args}"
        raise CalculatorError(f"{name}() takes {expected} argument(s), got {len(node.args)}")
    return function(*(_eval(arg) for arg in node.args))


def _power(base: Number, exponent: Number) -> Number:
    """``base ** exponent``, refused before computing when the result would be huge."""
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (|exponent| <= {MAX_EXPONENT})")
    if base != 0 and exponent * math.log10(abs(base)) > MAX_MAGNITUDE_LOG10:
        raise CalculatorError("result is too large")
    if base < 0 and not float(exponent).is_integer():
        raise CalculatorError("a negative number to a fractional power is not a real number")
    result: Number = base**exponent
    return result


def _checked(value: object) -> Number:
    """Keeps every intermediate result a finite real number within float range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError("result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not finite (overflow or undefined)")
    if isinstance(value, int) and value.bit_length() > 1023:
        raise CalculatorError("result is too large")
    return value
