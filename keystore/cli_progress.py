"""Progress on stderr: one line per phase, each left ticked with its time when it ends.

A long command goes through phases of very different kinds: deriving a key
(seconds, no measurable progress), copying rows or bytes (a bar), and a final
commit or check (seconds again, nothing to count).  Showing only the copy made a
100 000-row rekey sit at 99 000/100 000 through its commit, so every phase gets
its own line: a spinner while it runs, a tick and its elapsed time once done.
Byte counts are shown in human units (kB, MB).

Drawn only when stderr is a terminal (rich is imported lazily: it is a tenth of
the start-up time and most invocations never draw anything).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["Phases", "human_bytes", "plural"]

Unit = Literal["rows", "bytes", "steps"]


def human_bytes(n: int) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as ``ls -h --si`` and rich print them)."""
    from rich.filesize import decimal

    return str(decimal(n))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 category"``, ``"2 categories"``: a count with its noun agreeing."""
    if n == 1:
        return f"{n} {word}"
    return f"{n} {many if many is not None else word + 's'}"


def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


class Phases:
    """The phases of one command, drawn as they happen; use as a context manager."""

    def __init__(self, console: Console | None = None):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._console = console if console is not None else _console()
        self._progress: Progress = Progress(
            SpinnerColumn(finished_text="[green]✓"),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(),
            console=self._console,
            disable=not self._console.is_terminal,
        )

    def __enter__(self) -> Phases:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _finish(self, task: TaskID) -> None:
        total = self._progress.tasks[self._index(task)].total
        self._progress.update(task, total=total or 1, completed=total or 1)
        self._progress.stop_task(task)

    def _index(self, task: TaskID) -> int:
        return next(i for i, t in enumerate(self._progress.tasks) if t.id == task)

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        """A phase with nothing to count (key derivation, commit, check)."""
        task = self._progress.add_task(description, total=None, amount="")
        try:
            yield
        except BaseException:
            self._progress.remove_task(task)  # the error line says what failed
            raise
        self._finish(task)

    @contextlib.contextmanager
    def count(
        self, description: str, unit: Unit, *, then: str | None = None
    ) -> Iterator[Callable[[int, int], None]]:
        """A phase with a bar; yields ``update(done, total)``.

        ``then`` names the phase that starts once ``done`` reaches ``total``
        inside the same library call (e.g. the commit after the last row), so the
        bar never sits full while the real work goes on.
        """
        task = self._progress.add_task(description, total=None, amount="")
        follow: TaskID | None = None

        def amount(done: int, total: int) -> str:
            if unit == "bytes":
                return f"{human_bytes(done)}/{human_bytes(total)}"
            return f"{done:,}/{total:,} {unit}"

        def update(done: int, total: int) -> None:
            nonlocal follow
            self._progress.update(task, completed=done, total=total, amount=amount(done, total))
            if then is not None and follow is None and total and done >= total:
                self._finish(task)
                follow = self._progress.add_task(then, total=None, amount="")

        try:
            yield update
        except BaseException:
            for t in (task, follow):
                if t is not None:
                    self._progress.remove_task(t)
            raise
        if follow is None:
            self._finish(task)
        else:
            self._finish(follow)
