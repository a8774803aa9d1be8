"""The person beside the robot: pauses to reset the scene, answers (save / discard / re-record, success or not).

`vmp-record` and `vmp-deploy` ask through one small interface, so the same runs work at a terminal, unattended
(scripted answers: tests, batch jobs) or with nobody asked at all (simulation, which resets and judges itself):

    operator.wait(prompt)                 block until the person says go on
    operator.choose(prompt, options)      one of options' keys, e.g. {"y": "success", "n": "failure"}
    operator.stop_requested()             the person asked to end the running episode (polled every tick)
"""

from __future__ import annotations

import logging
import select
import sys
from typing import Any, TextIO

log = logging.getLogger(__name__)

OPERATOR_KINDS = ("none", "terminal", "scripted")


class TerminalOperator:
    """Reads answers line by line from a terminal (or any text stream: a pipe feeds it in tests and scripts).

    Ending an episode early (Enter during the episode) works only on an interactive terminal: on a pipe the next
    answers are already waiting, and a poll would take them for a key press."""

    def __init__(self, stream: TextIO | None = None, out: TextIO | None = None):
        self.stream = stream or sys.stdin
        self.out = out or sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def _line(self, prompt: str) -> str:
        print(prompt, file=self.out, flush=True)
        line = self.stream.readline()
        if not line:
            raise EOFError(f"the operator's input ended while asked: {prompt!r}")
        return line.strip()

    def wait(self, prompt: str) -> None:
        self._line(f"{prompt} [Enter]")

    def choose(self, prompt: str, options: dict[str, str]) -> str:
        menu = " / ".join(f"[{key}] {meaning}" for key, meaning in options.items())
        while True:
            answer = self._line(f"{prompt}  {menu}").lower()
            if answer in options:
                return answer
            print(f"  '{answer}' is not one of {list(options)}", file=self.out, flush=True)

    def stop_requested(self) -> bool:
        if not self.interactive:
            return False
        ready, _, _ = select.select([self.stream], [], [], 0)
        if ready:
            self.stream.readline()
            return True
        return False


class ScriptedOperator:
    """Answers from a list, in order; every prompt is kept in ``asked`` (tests check what a person would be asked).
    ``wait`` consumes no answer. Running out of answers, or an answer that is not an option, is an error."""

    def __init__(self, answers: list[str] | tuple[str, ...] = ()):
        self.answers = [str(a).strip().lower() for a in answers]
        self.asked: list[str] = []

    def wait(self, prompt: str) -> None:
        self.asked.append(prompt)

    def choose(self, prompt: str, options: dict[str, str]) -> str:
        self.asked.append(prompt)
        if not self.answers:
            raise ValueError(f"operator.answers ran out at {prompt!r} (options {list(options)})")
        answer = self.answers.pop(0)
        if answer not in options:
            raise ValueError(f"operator.answers: {answer!r} is not one of {list(options)} (asked {prompt!r})")
        return answer

    def stop_requested(self) -> bool:
        return False


def build_operator(ocfg: Any, robot_kind: str) -> TerminalOperator | ScriptedOperator | None:
    """The operator of an ``operator`` config node: ``kind`` none | terminal | scripted | auto (a terminal for
    real robots, none for simulated ones, which reset and judge themselves); ``answers`` for scripted."""
    kind = str(ocfg.get("kind", "auto"))
    if kind == "auto":
        kind = "none" if robot_kind == "sim" else "terminal"
    if kind not in OPERATOR_KINDS:
        raise ValueError(f"operator.kind must be one of {('auto', *OPERATOR_KINDS)}, got {kind!r}")
    if kind == "none":
        return None
    if kind == "terminal":
        return TerminalOperator()
    return ScriptedOperator(list(ocfg.get("answers") or []))
