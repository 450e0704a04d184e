"""Progress bars for folds and epochs (rich); silent when ``quiet=true``."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class BenchProgress:
    """Two bars: jobs (model x seed x fold) and epochs of the current job."""

    def __init__(self, jobs: int, epochs: int, quiet: bool = False) -> None:
        self.quiet, self.jobs, self.epochs = quiet, jobs, epochs
        self._progress: Progress | None = None

    def __enter__(self) -> BenchProgress:
        if not self.quiet:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[status]}"), transient=True)
            self._progress.start()
            self._jobs = self._progress.add_task("folds", total=self.jobs, status="")
            self._epochs = self._progress.add_task("epochs", total=self.epochs, status="")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, label: str) -> None:
        """A new job begins: name it and reset the epoch bar."""
        if self._progress is not None:
            self._progress.update(self._jobs, description=label)
            self._progress.reset(self._epochs, total=self.epochs, status="")

    def epoch(self, record: dict) -> None:
        """One epoch finished; show its inner-validation macro-F1."""
        if self._progress is not None:
            self._progress.update(self._epochs, advance=1, status=f"val F1 {record['val_macro_f1']:.3f}")

    def advance(self) -> None:
        """The current job finished."""
        if self._progress is not None:
            self._progress.advance(self._jobs)
