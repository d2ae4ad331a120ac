"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _commands(text):
    return [line.strip() for line in text.splitlines() if line.strip().startswith("python3 -m venv")]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _commands((ROOT / "README.md").read_text())
    assert len(commands) == 2, commands
    test_command = next(c for c in commands if "pytest" in c)
    ci_commands = _commands((ROOT / ".ci" / "run").read_text())
    assert ci_commands == [test_command]
