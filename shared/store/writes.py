"""Redis commands collected to run later, inside the job store's compare-and-set script."""

from __future__ import annotations

from typing import Any

from redis.commands.core import CoreCommands


class Writes(CoreCommands):
    """Collect commands written with redis-py's usual methods (set, zadd, xadd...).

    Nothing is sent: execute_command, which every redis-py command method ends in, only
    records the command's words, and as_args() hands them to scripts.COMMIT.
    """

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **_options: Any) -> None:
        self.commands.append(args)

    def __len__(self) -> int:
        return len(self.commands)

    def as_args(self) -> list[Any]:
        """Return the commands as scripts.COMMIT reads them: count, then (length, words...)."""
        args: list[Any] = [len(self.commands)]
        for command in self.commands:
            args += [len(command), *command]
        return args
