"""Output comparison with EvalPlus 0.3.1 semantics (standard library only).

Mirrors ``evalplus/eval/__init__.py`` (``is_floats``, the comparison block of ``unsafe_execute``) and the
special oracles of ``evalplus/eval/_special_oracle.py``. The file is importable (unit tests call it in
process) and is also pasted verbatim into sandboxed test programs, so it imports only the standard
library and defines only ``_emreason_*`` / ``EMREASON_*`` names.

Rules, per input (``out`` = candidate's value, ``exp`` = reference's value):

1. exact equality ``out == exp`` first (after a task's special oracle, if it has one);
2. otherwise, only when the task gives an ``atol`` or ``exp`` is a float / a non-empty list or tuple of
   floats (EvalPlus then enforces ``atol = 1e-6``): ``type(out) is type(exp)``, equal lengths, and every
   float leaf within ``atol + 1e-7 * |exp|`` (``np.allclose(out, exp, rtol=1e-7, atol=atol)``);
3. ints, bools and strings are always compared exactly, also inside containers (EvalPlus's ``allclose``
   would also tolerate integers once an ``atol`` is set; here an off-by-one integer is always wrong);
4. NaN never matches under tolerance (``np.allclose`` has ``equal_nan=False``); it matches only through
   exact equality, i.e. when both sides hold the same NaN object inside a container.
"""

import math

# Mbpp tasks whose outputs are regex matches: only "is it None" is compared (EvalPlus also maps the
# reference's outputs to ``is not None``).
EMREASON_NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")
# Mbpp tasks whose list outputs are compared as sets.
EMREASON_SET_EQ_TASKS = (
    "similar_elements",
    "find_char_long",
    "common_in_nested_lists",
    "extract_singly",
    "larg_nnum",
    "intersection_array",
    "find_dissimilar",
    "Diff",
)
EMREASON_RTOL = 1e-7
EMREASON_FLOAT_ATOL = 1e-6


def _emreason_is_floats(x):
    """EvalPlus ``is_floats``: a float, a non-empty list/tuple of floats, or a float numpy array."""
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(item, float) for item in x)
    dtype = getattr(x, "dtype", None)
    return type(x).__name__ == "ndarray" and getattr(dtype, "kind", "") == "f"


def _emreason_close(out, exp, atol):
    """``np.allclose(out, exp, rtol=1e-7, atol=atol)`` on float (and complex) leaves; other leaves exact."""
    if isinstance(exp, (list, tuple)):
        if not isinstance(out, (list, tuple)) or len(out) != len(exp):
            return False
        return all(_emreason_close(o, e, atol) for o, e in zip(out, exp))
    if type(exp).__name__ == "ndarray" or type(out).__name__ == "ndarray":
        import numpy

        try:
            return bool(numpy.allclose(out, exp, rtol=EMREASON_RTOL, atol=atol))
        except (TypeError, ValueError):
            return False
    numeric = (int, float, complex)
    if isinstance(exp, (float, complex)) and isinstance(out, numeric) and not isinstance(out, bool):
        if isinstance(exp, float) and isinstance(out, (int, float)):
            if math.isinf(exp) or math.isinf(out):
                return out == exp
        try:
            return abs(out - exp) <= atol + EMREASON_RTOL * abs(exp)  # False for NaN on either side
        except OverflowError:
            return False
    return _emreason_equal(out, exp)


def _emreason_equal(out, exp):
    """``bool(out == exp)``; a comparison that raises (numpy arrays, odd types) is a mismatch."""
    try:
        return bool(out == exp)
    except Exception:
        return False


def _emreason_poly(xs, x):
    """Polynomial with coefficients ``xs`` (lowest degree first) at ``x`` (HumanEval/32 oracle)."""
    return sum(coefficient * math.pow(x, power) for power, coefficient in enumerate(xs))


def _emreason_surface_area(base_edge, height):
    """Mbpp/581 oracle: square pyramid, ``height`` perpendicular to the base; rounded to an integer."""
    slant = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 2 * base_edge * slant)


def _emreason_digit_distance(first, second):
    """Mbpp/558 oracle: digit-wise distance after left-padding the shorter number with zeros."""
    a, b = str(first), str(second)
    width = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(width), b.zfill(width)))


def _emreason_expected(dataset, entry_point, value):
    """The reference's output as EvalPlus stores it (``is not None`` for the regex-match tasks)."""
    if dataset == "mbpp" and entry_point in EMREASON_NOT_NONE_TASKS:
        return value is not None
    return value


def _emreason_same(out, exp, atol, dataset="", entry_point="", args=()):
    """True when ``out`` is accepted for expected ``exp`` (``exp`` already passed through
    :func:`_emreason_expected`); ``args`` are the call's inputs (some oracles recompute from them)."""
    exact = _emreason_equal(out, exp)
    if dataset == "mbpp":
        if entry_point == "are_equivalent":  # Mbpp/164: EvalPlus accepts every output
            exact = True
        elif entry_point == "sum_div":  # Mbpp/295
            exact = exact or _emreason_equal(out, 0)
        elif entry_point == "surface_Area":  # Mbpp/581
            try:
                exact = exact or abs(out - _emreason_surface_area(*args)) <= atol
            except Exception:
                exact = False
        elif entry_point == "digit_distance_nums":  # Mbpp/558
            exact = exact or _emreason_equal(out, _emreason_digit_distance(*args))
        elif entry_point in EMREASON_SET_EQ_TASKS:
            try:
                exact = set(out) == set(exp)
            except Exception:
                exact = False
        elif entry_point in EMREASON_NOT_NONE_TASKS:
            exact = (out == exp) if isinstance(out, bool) else (exp == (out is not None))
    if dataset == "humaneval" and entry_point == "find_zero":  # HumanEval/32: a root, not the root
        try:
            return abs(_emreason_poly(*args, out)) <= atol
        except Exception:
            return False
    if atol == 0 and _emreason_is_floats(exp):
        atol = EMREASON_FLOAT_ATOL
    if exact or atol == 0:
        return bool(exact)
    if type(out) is not type(exp):
        return False
    return _emreason_close(out, exp, atol)
