"""`vmp.progress`: a bar in a log (nohup, CI) writes a handful of whole lines, not one per update or redraw."""

from __future__ import annotations

import io
import time

from vmp.progress import NON_TTY_MAX_LINES, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(file, n=500, seconds=3.0, **kwargs) -> str:
    """n updates spread over ``seconds`` (sleeping, so the test costs no CPU), with a postfix set every update as
    vmp-collect and vmp-eval do."""
    bar = progress(total=n, desc="collect lift", unit="ep", file=file, **kwargs)
    for i in range(n):
        time.sleep(seconds / n)
        bar.update(1)
        bar.set_postfix(success=f"{i}/{i + 1}")
    bar.close()
    return file.getvalue()


def test_log_gets_a_few_whole_lines():
    text = _run(io.StringIO())
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, lines  # the start and the end: the default interval is 30 s
    assert lines[-1].startswith("collect lift: 100%") and "500/500" in lines[-1]


def test_log_interval_is_the_callers():
    text = _run(io.StringIO(), n=200, seconds=2.0, mininterval=0.5)
    assert "\r" not in text
    assert 3 <= text.count("\n") <= 8, text  # about one line per 0.5 s, plus the first and the last


def test_log_lines_are_capped_however_long_the_run():
    """A caller's short interval (here none at all) still gets a line only per 1/NON_TTY_MAX_LINES of the total."""
    buf = io.StringIO()
    for _ in progress(range(5000), desc="train", file=buf, mininterval=0):
        pass
    assert "\r" not in buf.getvalue() and buf.getvalue().count("\n") <= NON_TTY_MAX_LINES + 2


def test_terminal_gets_the_usual_bar():
    text = _run(_Terminal(), n=200, seconds=2.0)
    assert text.count("\r") >= 10  # redrawn in place (tqdm's 0.1 s default), postfix included
    assert text.count("\n") <= 1 and "200/200" in text.rsplit("\r", 1)[-1]
