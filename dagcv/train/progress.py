"""Terminal output of a run: a rich progress bar (epoch, step, samples/s, loss, ETA) and a table per epoch."""

from __future__ import annotations

from typing import Any


class Progress:
    """A progress bar on stderr, updated at logging steps only (cheap), or nothing when disabled."""

    def __init__(self, *, enabled: bool, total: int, done: int = 0, unit: str = "step") -> None:
        self.enabled, self.total, self.done, self.unit = enabled, total, done, unit
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.done, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"epoch {epoch + 1}/{epochs}")

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self._bar is None:
            return
        losses = "  ".join(f"{k.removeprefix('train/')} {v:.4f}" for k, v in record.items() if k.startswith("train/"))
        speed = next(
            (f"{record[k]:,.0f} {k.replace('_per_s', '')}/s" for k in ("samples_per_s", "sps") if k in record), ""
        )
        self._bar.update(self._task, completed=step, info=f"{speed}  {losses}")

    def line(self, text: str) -> None:
        """A line printed above the bar (nothing when disabled)."""
        if self._bar is not None:
            self._bar.console.print(text)

    def epoch_line(self, record: dict[str, Any], epochs: int) -> None:
        """One line per finished epoch, printed above the bar."""
        if self._bar is None:
            return
        values = "  ".join(
            f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float) and k not in ("lr", "samples_per_s")
        )
        self._bar.console.print(f"epoch {record['epoch']}/{epochs}  step {record['step']}  {values}")


def print_metrics(record: dict[str, Any], console: Any = None, title: str | None = None) -> None:
    """One record (an epoch, an evaluation) as a two-column table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title or f"epoch {record.get('epoch', '')}".strip(), title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in record.items():
        if key in ("kind", "epoch"):
            continue
        if isinstance(value, float):
            table.add_row(key, f"{value:.4f}")
        elif isinstance(value, list):
            table.add_row(key, "\n".join(" ".join(f"{int(x):>5}" for x in row) for row in value))
        else:
            table.add_row(key, str(value))
    console.print(table)
