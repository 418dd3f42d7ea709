"""invoke's own usage errors as the lab's: one line naming the bad flag and the way out, exit 2.

invoke parses a task's flags only after it has loaded tasks.py, and ends a
parse error with "No idea what ..." and exit 1 (invoke/program.py,
Program.run). `install()` wraps the two parsing steps that run after tasks.py
is loaded, so an error there becomes an Exit that invoke prints as it stands.
It relies on invoke 3.0.3's Program, Argument and ParseMachine (pinned in the
locks); tests/test_tasks.py drives each message through `invoke`.
"""

from __future__ import annotations

import re
import traceback

from invoke import Argument, Exit, Program
from invoke.exceptions import ParseError
from invoke.parser.parser import ParseMachine

# invoke's parse messages, said the way the lab's flags are written (a flag's name is in an Argument's repr).
_PARSE_ERRORS = (
    (r"^No idea what (.*) is$", r"unknown task or flag \1"),
    (r"^Flag <Argument: (\w+).*> needed value and was not given one$",
     lambda match: f"--{match.group(1).replace('_', '-')} needs a value"),
    (r"^Flag <Argument: (\w+).*> doesn't take any value$",
     lambda match: f"--{match.group(1).replace('_', '-')} takes no value"),
)


def _refused_flag(error: ValueError) -> tuple[str | None, str] | None:
    """(task, "--port must be a whole number, got 'x'") when `error` is invoke refusing a whole-number flag's
    value, else None.

    invoke gives a flag its default's type (an int default: int(value)) and
    lets int()'s ValueError through as it stands, without the flag's name; the
    flag (an Argument) and the task being parsed (the ParseMachine's context)
    are in the frames it passed through.
    """
    argument = machine = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        argument = owner if isinstance(owner, Argument) else argument
        machine = owner if isinstance(owner, ParseMachine) else machine
    if argument is None or argument.kind is not int:
        return None
    task_name = getattr(getattr(machine, "context", None), "name", None)
    return task_name, f"--{argument.name.replace('_', '-')} must be a whole number, got {argument.raw_value!r}"


def _usage_errors_exit_2(parse):
    """Wrap one of invoke's parsing steps so that its ParseError (or a whole-number flag's ValueError) ends as
    the lab's one line and exit 2: an Exit, which invoke prints as it stands with its own code."""
    def parse_step(program):
        try:
            return parse(program)
        except ParseError as error:
            task_name = getattr(error.context, "name", None)
            text = str(error).rstrip("!")
            for pattern, replacement in _PARSE_ERRORS:
                text = re.sub(pattern, replacement, text)
        except ValueError as error:
            if (refused := _refused_flag(error)) is None:
                raise
            task_name, text = refused
        way_out = f"invoke --help {task_name}" if task_name else "invoke --list"
        raise Exit(f"error: {text}; see {way_out}", code=2) from None
    parse_step.lab_usage_errors = True
    return parse_step


def install() -> None:
    """Wrap a task's flags (parse_tasks) and `--help TASK` (parse_cleanup), parsed after tasks.py is loaded."""
    if not getattr(Program.parse_tasks, "lab_usage_errors", False):
        Program.parse_tasks = _usage_errors_exit_2(Program.parse_tasks)
        Program.parse_cleanup = _usage_errors_exit_2(Program.parse_cleanup)
