"""vmp-bench lerobot refuses bad arguments by name before it exports, trains or re-executes anything."""

import pytest

from vmp.bench.lerobot import main


@pytest.mark.parametrize("args, message", [
    (["--tag", "a/b"], "--tag 'a/b': letters, digits"),
    (["--minutes", "0"], "--minutes 0.0: must be positive"),
    (["--timeline-episodes", "-1"], "--timeline-episodes -1: must be positive (or 0)"),
    (["--steps", "0"], "--steps 0: must be positive"),
])
def test_bad_arguments_are_refused_by_name(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "runs"), "--lerobot-python", str(tmp_path / "no-python")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing exported or trained
