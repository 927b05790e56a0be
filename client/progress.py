"""A one-line progress bar for `dynwork wait`, drawn on a terminal and silent elsewhere."""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """`[#####-----] done/total done, N failed  12.3s` on one line, redrawn in place."""

    def __init__(self, total: int, stream: TextIO, enabled: bool, width: int = 30) -> None:
        self.total, self.stream, self.enabled, self.width = total, stream, enabled, width
        self.done = self.failed = 0
        self.start = time.monotonic()

    def line(self) -> str:
        filled = self.width * self.done // self.total if self.total else self.width
        bar = "#" * filled + "-" * (self.width - filled)
        failed = f", {self.failed} failed" if self.failed else ""
        return f"[{bar}] {self.done}/{self.total} done{failed}  {time.monotonic() - self.start:.1f}s"

    def update(self, failed: bool = False) -> None:
        """One more finished (and, when `failed`, failed) item."""
        self.done += 1
        self.failed += failed
        self.draw()

    def draw(self) -> None:
        if self.enabled:
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def clear(self) -> None:
        """Erase the bar so that a line printed next (on either stream) starts clean."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line on the stream above the bar."""
        self.clear()
        print(text, file=self.stream)
        self.draw()

    def close(self) -> None:
        """Leave the final state of the bar on its own line."""
        if self.enabled:
            self.stream.write("\r" + self.line() + "\n")
            self.stream.flush()
