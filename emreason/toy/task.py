"""A synthetic multi-step arithmetic reasoning task: the toy model's world.

A problem is a chain of ``+``/``-`` operations, e.g. ``47+8-3``. Its solution is a chain of thought
with one equation per operation and a final ``\\boxed{}`` answer::

    47+8=55. 55-3=52. \\boxed{52}

Difficulty ``level`` is the number of operations. The first operand is drawn from 0-99, later ones
from 0-9 (so every step is a small, learnable carry/borrow problem).

Noisy supervision. Real pretraining text contains flawed reasoning, and that is what puts a model
into the regime where entropy minimization helps: its *most confident* continuation is usually right
while its samples wander. The training generator therefore corrupts, with probability
``corruption_rate``, one intermediate result by one digit; later steps consistently continue from the
corrupted value, so the final answer is wrong the way a careless human's would be.

Splits. Every problem belongs to exactly one split, decided by a hash of its text, so training data
can never contain a held-out problem no matter how many samples are drawn.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

OPERATORS = ("+", "-")
HELD_OUT_FRACTION_DENOMINATOR = 5  # one problem in five is held out
PROMPT_TEMPLATE = "Compute {expression}."


@dataclass(frozen=True)
class ToyProblem:
    """One problem: operands and operators, with its gold answer."""

    operands: tuple[int, ...]
    operators: tuple[str, ...]

    @property
    def level(self) -> int:
        return len(self.operators)

    @property
    def expression(self) -> str:
        parts = [str(self.operands[0])]
        for op, value in zip(self.operators, self.operands[1:]):
            parts.append(f"{op}{value}")
        return "".join(parts)

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(expression=self.expression)

    @property
    def answer(self) -> int:
        return _evaluate(self.operands, self.operators)[-1]

    @property
    def split(self) -> str:
        digest = hashlib.sha256(self.expression.encode()).digest()
        return "heldout" if digest[0] % HELD_OUT_FRACTION_DENOMINATOR == 0 else "train"

    def solution(self, rng: random.Random | None = None, corruption_rate: float = 0.0) -> str:
        """Chain-of-thought solution text; with ``rng`` and a rate > 0 it may carry one corrupted step."""
        results = list(_evaluate(self.operands, self.operators))
        if rng is not None and corruption_rate > 0 and rng.random() < corruption_rate:
            step = rng.randrange(len(results))
            results[step] = _corrupt(results[step], rng)
            # Later steps continue consistently from the corrupted value.
            for j in range(step + 1, len(results)):
                results[j] = _apply(results[j - 1], self.operators[j], self.operands[j + 1])
        lines = []
        left = self.operands[0]
        for j, (op, value) in enumerate(zip(self.operators, self.operands[1:])):
            lines.append(f"{left}{op}{value}={results[j]}.")
            left = results[j]
        lines.append(f"\\boxed{{{results[-1]}}}")
        return " ".join(lines)

    def shortcut_solution(self, rng: random.Random, max_offset: int = 3) -> str:
        """A "direct guess": ``\\boxed{answer + d}`` with no derivation, ``d`` uniform in
        ``[-max_offset, max_offset]`` (so it is right only 1 time in ``2 * max_offset + 1``).

        This is the shortcut route of the regime-2 toy ("shortcut"): a majority of its pretraining
        solutions look like this, so greedy decoding takes it, while the step-by-step route
        (`solution`) stays within the model's reach.
        """
        if max_offset < 0:
            raise ValueError(f"max_offset must be >= 0, got {max_offset}")
        return f"\\boxed{{{self.answer + rng.randint(-max_offset, max_offset)}}}"


def _apply(left: int, op: str, right: int) -> int:
    return left + right if op == "+" else left - right


def _evaluate(operands: tuple[int, ...], operators: tuple[str, ...]) -> tuple[int, ...]:
    results, value = [], operands[0]
    for op, right in zip(operators, operands[1:]):
        value = _apply(value, op, right)
        results.append(value)
    return tuple(results)


def _corrupt(value: int, rng: random.Random) -> int:
    """Change one decimal digit of ``value`` (keeping its sign) by +-1..3."""
    sign = -1 if value < 0 else 1
    digits = list(str(abs(value)))
    position = rng.randrange(len(digits))
    old = int(digits[position])
    choices = [d for d in range(10) if d != old and abs(d - old) <= 3]
    if position == 0 and len(digits) > 1:
        choices = [d for d in choices if d != 0]
    digits[position] = str(rng.choice(choices))
    return sign * int("".join(digits))


def random_problem(rng: random.Random, level: int) -> ToyProblem:
    """Draw a problem with ``level`` operations (first operand 0-99, later ones 0-9)."""
    if level < 1:
        raise ValueError(f"level must be >= 1, got {level}")
    operands = (rng.randrange(100),) + tuple(rng.randrange(10) for _ in range(level))
    operators = tuple(rng.choice(OPERATORS) for _ in range(level))
    return ToyProblem(operands, operators)


def iter_problems(split: str, seed: int, levels: tuple[int, ...] = (1, 2)) -> Iterator[ToyProblem]:
    """Endless stream of problems of ``split`` ('train' or 'heldout'), levels drawn uniformly."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(seed)
    while True:
        problem = random_problem(rng, rng.choice(levels))
        if problem.split == split:
            yield problem


def make_problems(
    split: str, n: int, seed: int = 0, levels: tuple[int, ...] = (1, 2), unique: bool = True
) -> list[ToyProblem]:
    """``n`` problems of ``split``; with ``unique`` no expression repeats (held-out evaluation sets)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out, seen = [], set()
    for problem in iter_problems(split, seed, levels):
        if unique and problem.expression in seen:
            continue
        seen.add(problem.expression)
        out.append(problem)
        if len(out) == n:
            return out
    raise AssertionError("iter_problems is endless")  # for type checkers: the loop only exits by return


_BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def extract_answer(completion: str) -> int | None:
    """The integer in the last ``\\boxed{}`` of ``completion``, or None."""
    found = _BOXED.findall(completion)
    return int(found[-1]) if found else None


def grade(completion: str, answer: int) -> bool:
    """True when the completion's final boxed answer equals ``answer``."""
    return extract_answer(completion) == answer
