"""Math answer extraction and grading (PRIME / Qwen2.5-Math style, checked with math-verify).

``extract_answer`` finds the final answer in a completion: the last ``\\boxed{}`` (or ``\\fbox{}``), else the
phrase "the answer is ...", else the last number. ``is_correct`` compares it with the gold answer using
math-verify (gold first), after a cheap normalised string comparison that also covers text answers.

math-verify bounds its own parsing and verification with ``signal.alarm``, which only works on a main
thread and cannot interrupt every C-level hang. :func:`grade_many` therefore grades in worker processes
(their main thread, where the alarms work) and additionally kills any worker that overruns a hard
per-item deadline, counting that item as incorrect.
"""

from __future__ import annotations

import functools
import json
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from fractions import Fraction

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_ANSWER_IS = re.compile(r"the (?:final )?answer is[:\s]*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` with balanced braces (or ``\\boxed x``)."""
    best_start, best_cmd = -1, ""
    for command in _BOX_COMMANDS:
        position = text.rfind(command)
        if position > best_start:
            best_start, best_cmd = position, command
    if best_start < 0:
        return None
    rest = text[best_start + len(best_cmd) :]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        token = rest.strip().split("$")[0].split()
        return token[0] if token else None
    open_at = rest.find("{")
    if open_at < 0 or rest[:open_at].strip():
        return None
    depth = 0
    for index in range(open_at, len(rest)):
        char = rest[index]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[open_at + 1 : index].strip()
    return None  # unbalanced: the completion was cut off inside the box


def extract_answer(text: str) -> str | None:
    """Final answer of a completion: last ``\\boxed{}``, then "the answer is ...", then the last number."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    phrases = _ANSWER_IS.findall(text)
    if phrases:
        answer = phrases[-1].strip()
        answer = re.split(r"(?<!\d)\.(?!\d)|\n", answer)[0].strip().strip("$").strip()
        if answer:
            return answer
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "")
    return None


_TEXT_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_DROP = (
    "\\$",
    "\\left",
    "\\right",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "$",
    "^\\circ",
    "^{\\circ}",
    "\\%",
    "%",
)


def normalize_answer(answer: str) -> str:
    """Loose canonical string form used before (and as fallback to) symbolic comparison."""
    text = answer.strip()
    for _ in range(2):
        text = _TEXT_WRAPPERS.sub(r"\1", text)
    for token in _DROP:
        text = text.replace(token, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\s+", "", text).rstrip(".").lower()
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")  # thousands separators, only in a bare number
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text


# ---- answer families math-verify misses: normalised on both sides before comparing ----------------
# A choice letter on its own: "C", "(C)", "\text{(C)}" (after _TEXT_WRAPPERS).
_CHOICE_ONLY = re.compile(r"\(?\s*([A-E])\s*\)?")
# A choice letter leading a longer answer: "(C) Plane", "C) Plane", "C. Plane", "C: Plane".
_CHOICE_LEAD = re.compile(r"(?:\(\s*([A-E])\s*\)|([A-E])\s*[).:])(?:\s|$|[^\sA-Za-z])")


def choice_letter(answer: str, *, alone: bool) -> str | None:
    """The multiple-choice letter of ``answer``: ``alone`` = the whole answer is the letter ("(C)");
    otherwise the letter may be followed by the option's text ("(C) Plane")."""
    text = answer.strip()
    for _ in range(2):
        text = _TEXT_WRAPPERS.sub(r"\1", text)
    text = text.replace("$", "").strip()
    match = _CHOICE_ONLY.fullmatch(text)
    if match:
        return match.group(1)
    if alone:
        return None
    match = _CHOICE_LEAD.match(text + " ")
    return (match.group(1) or match.group(2)) if match else None


# Longest spellings first so that "\leq" is not read as "\le" + "q".
_RELATIONS = [
    (r"\geqslant", ">="), (r"\leqslant", "<="), (r"\geq", ">="), (r"\leq", "<="), (r"\ge", ">="),
    (r"\le", "<="), (r"\gt", ">"), (r"\lt", "<"), (">=", ">="), ("<=", "<="), ("≥", ">="), ("≤", "<="),
    (">", ">"), ("<", "<"),
]  # fmt: skip
_RELATION = re.compile(
    "|".join(re.escape(text) + (r"(?![A-Za-z])" if text[0] == "\\" else "") for text, _ in _RELATIONS)
)
_VARIABLE = re.compile(r"[a-zA-Z]|\\(?:theta|alpha|beta|lambda|mu|phi|omega|sigma|tau)")
_OR = re.compile(r"\\text\{\s*or\s*\}|\\mbox\{\s*or\s*\}|\bor\b|\\vee(?![A-Za-z])|\\cup(?![A-Za-z])|\\lor")


def _one_inequality(text: str) -> tuple[str, str] | None:
    """``(variable, interval)`` for ``x > a``, ``a \\le x``, ``a < x \\le b`` (one variable), else None."""
    pieces = _RELATION.split(text)
    relations = [dict(_RELATIONS)[r] for r in _RELATION.findall(text)]
    sides = [piece.strip() for piece in pieces]
    if not relations or any(not side or "=" in side or "," in side for side in sides):
        return None
    if len(relations) == 1:
        left, right = sides
        left_var, right_var = _VARIABLE.fullmatch(left), _VARIABLE.fullmatch(right)
        if bool(left_var) == bool(right_var):
            return None  # no variable, or two single letters: which one is the variable is unclear
        relation = relations[0]
        if right_var:  # a < x  ->  x > a
            left, right = right, left
            relation = {">": "<", "<": ">", ">=": "<=", "<=": ">="}[relation]
        if relation in (">", ">="):
            return left, ("(" if relation == ">" else "[") + right + r",\infty)"
        return left, r"(-\infty," + right + (")" if relation == "<" else "]")
    if len(relations) == 2 and _VARIABLE.fullmatch(sides[1]):
        low, variable, high = sides
        first, second = relations
        if first[0] != second[0]:
            return None  # "a < x > b" is not an interval
        if first[0] == ">":  # b > x > a  ->  a < x < b
            low, high, first, second = high, low, second.replace(">", "<"), first.replace(">", "<")
        if _VARIABLE.fullmatch(low) or _VARIABLE.fullmatch(high):
            return None
        opening = "(" if first == "<" else "["
        closing = ")" if second == "<" else "]"
        return variable, f"{opening}{low},{high}{closing}"
    return None


def inequality_to_interval(answer: str) -> str | None:
    """Interval notation for an inequality in one variable (``x > 3`` -> ``(3,\\infty)``; ``x<1 or x>=2``
    -> ``(-\\infty,1)\\cup[2,\\infty)``), or None when ``answer`` is not such an inequality."""
    text = answer.strip().replace("$", "").replace("\\left", "").replace("\\right", "")
    text = re.sub(r"\\[,;!: ]", " ", text).strip().rstrip(".")
    if not _RELATION.search(text):
        return None
    parts = _OR.split(text)
    converted = [_one_inequality(part) for part in parts]
    if any(c is None for c in converted) or len({c[0] for c in converted}) != 1:
        return None
    return r"\cup".join(c[1] for c in converted)


_REPEATING = re.compile(r"(-?)(\d*)\.(\d*)\s*\\(?:overline|bar)\s*(?:\{\s*(\d+)\s*\}|(\d))")


def _repeating_to_fraction(match: re.Match) -> str:
    sign, whole, fixed, repeat = match.group(1), match.group(2) or "0", match.group(3), match.group(4)
    repeat = repeat or match.group(5)
    # whole.fixed(repeat) = (whole fixed repeat - whole fixed) / (10^len(fixed) * (10^len(repeat) - 1))
    value = Fraction(
        int(whole + fixed + repeat) - int(whole + fixed), 10 ** len(fixed) * (10 ** len(repeat) - 1)
    )
    return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


def expand_repeating_decimals(answer: str) -> str:
    """``0.\\overline{5}`` -> ``\\frac{5}{9}``, ``1.2\\overline{34}`` -> ``\\frac{611}{495}`` (exact)."""
    return _REPEATING.sub(_repeating_to_fraction, answer)


def canonical_forms(predicted: str, gold: str) -> tuple[str, str]:
    """Rewrite the families math-verify misses into forms it compares: repeating decimals as fractions,
    inequalities as intervals (on both sides, so an inequality also matches an inequality)."""
    predicted, gold = expand_repeating_decimals(predicted), expand_repeating_decimals(gold)
    predicted = inequality_to_interval(predicted) or predicted
    gold = inequality_to_interval(gold) or gold
    return predicted, gold


def _as_latex(answer: str) -> str:
    answer = answer.replace("\\$", "")
    return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"


def is_correct(completion: str, gold: str) -> bool:
    """True when the completion's extracted answer equals ``gold`` (math-verify, gold first).

    Timeouts of math-verify are only enabled on the main thread (they use SIGALRM); elsewhere use
    :func:`grade_many`, which enforces deadlines from the outside.
    """
    if not isinstance(completion, str) or not isinstance(gold, str):
        raise TypeError(
            f"completion and gold must be str, got {type(completion).__name__}, {type(gold).__name__}"
        )
    predicted = extract_answer(completion)
    if predicted is None:
        return False
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    gold_letter = choice_letter(gold, alone=True)
    if gold_letter is not None:
        # Multiple choice: "(C) Plane" or "C" for gold "C"/"(C)"; a different letter is wrong.
        predicted_letter = choice_letter(predicted, alone=False)
        if predicted_letter is not None:
            return predicted_letter == gold_letter
    predicted, gold = canonical_forms(predicted, gold)
    if normalize_answer(predicted) == normalize_answer(gold):
        return True
    from math_verify import verify

    on_main = threading.current_thread() is threading.main_thread()
    seconds = 5 if on_main else None
    gold_parsed, predicted_parsed = _parsed(gold, seconds), _parsed(predicted, seconds)
    if not gold_parsed or not predicted_parsed:
        return False
    return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=seconds))


@functools.lru_cache(maxsize=4096)
def _parsed(answer: str, seconds: int | None):
    from math_verify import parse

    return parse(_as_latex(answer), parsing_timeout=seconds)


def answers_equivalent(first: str, second: str) -> bool:
    """Whether two *extracted* answers are the same value: the grader's comparison (normalised strings,
    then math-verify), so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` are equivalent. Used by majority voting.

    math-verify's ``verify`` is not guaranteed symmetric, so both orders are tried. Parses are cached
    (answers repeat across a problem's samples). Timeouts apply on the main thread only, as in
    :func:`is_correct`.
    """
    if not isinstance(first, str) or not isinstance(second, str):
        raise TypeError(f"answers must be str, got {type(first).__name__}, {type(second).__name__}")
    if normalize_answer(first) == normalize_answer(second):
        return True
    # The grader's rewrites too (repeating decimals, inequalities), so "0.\overline{3}" votes with
    # "\frac{1}{3}" and "x > 3" with "(3, \infty)"; both sides get the same rewrite: still symmetric.
    first, second = canonical_forms(first, second)
    if normalize_answer(first) == normalize_answer(second):
        return True
    from math_verify import verify

    seconds = 5 if threading.current_thread() is threading.main_thread() else None
    one, two = _parsed(first, seconds), _parsed(second, seconds)
    if not one or not two:
        return False
    return bool(verify(one, two, timeout_seconds=seconds)) or bool(verify(two, one, timeout_seconds=seconds))


class _Worker:
    """A grading subprocess speaking JSON lines (no multiprocessing: it must not re-import ``__main__``)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "emreason.evals._grade_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.index: int | None = None
        self.started = 0.0
        self.warm = False  # the first item also pays for importing math-verify and sympy

    def send(self, index: int, completion: str, gold: str) -> None:
        self.index, self.started = index, time.monotonic()
        self.process.stdin.write(json.dumps([index, completion, gold]) + "\n")
        self.process.stdin.flush()

    def receive(self) -> tuple[int, bool] | None:
        line = self.process.stdout.readline()
        if not line:
            return None
        index, verdict = json.loads(line)
        return int(index), bool(verdict)

    def stop(self, kill: bool) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def grade_many(
    pairs: Sequence[tuple[str, str]], *, workers: int = 2, timeout: float = 10.0, progress: bool = False
) -> list[bool]:
    """Grade ``(completion, gold)`` pairs in ``workers`` processes; an item over ``timeout`` s is wrong.

    A worker that overruns its item's deadline (or dies) is killed and replaced; the item counts as
    incorrect and every other item is still graded.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0, got {timeout!r}")
    pairs = list(pairs)
    results: list[bool] = [False] * len(pairs)
    if not pairs:
        return results
    pool = [_Worker() for _ in range(min(workers, len(pairs)))]
    pending = list(range(len(pairs)))[::-1]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pairs), desc="grading", unit="item")
    first_item_grace = 60.0
    try:
        for worker in pool:
            if pending:
                index = pending.pop()
                worker.send(index, *pairs[index])
        while any(w.index is not None for w in pool):
            busy = {w.process.stdout: w for w in pool if w.index is not None}
            ready, _, _ = select.select(list(busy), [], [], 0.2)
            now = time.monotonic()
            for position, worker in enumerate(pool):
                if worker.index is None:
                    continue
                finished = False
                if worker.process.stdout in ready:
                    answer = worker.receive()
                    if answer is None:  # died (e.g. out of memory): the item is wrong, replace it
                        worker.stop(kill=True)
                        worker = pool[position] = _Worker()
                    else:
                        results[answer[0]] = answer[1]
                        worker.index, worker.warm = None, True
                    finished = True
                elif now - worker.started > timeout + (0 if worker.warm else first_item_grace):
                    worker.stop(kill=True)
                    worker = pool[position] = _Worker()
                    finished = True
                if finished:
                    if bar is not None:
                        bar.update(1)
                    if pending:
                        index = pending.pop()
                        worker.send(index, *pairs[index])
    finally:
        for worker in pool:
            worker.stop(kill=False)
        if bar is not None:
            bar.close()
    return results
