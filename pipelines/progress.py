"""Readable progress for local runs: kfp's local runner prints every step's executor input
(JSON), TensorFlow's start-up lines and output listings. `ProgressFilter` stands in for
``sys.stdout`` during a run: the terminal gets numbered step starts and ends with the
elapsed time and the steps' own log lines (epochs, accuracies, errors); a log file gets
everything."""

from __future__ import annotations

import re
import sys
import threading
import time

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_OUTPUTS = re.compile(r"Task '([^']+)' (outputs:|has no outputs)")
_RUN_END = re.compile(r"Pipeline '([^']+)' finished with status (\w+)")
# TensorFlow / absl start-up chatter and kfp's executor bookkeeping.
_NOISE = re.compile(
    r"^[IW]\d{4} |WARNING: All log messages before absl|To enable the following instructions"
    r"|rebuild TensorFlow with the appropriate|\[KFP Executor|Streamed logs:|Running pipeline:"
    r"|Cleaned up workspace|^-{20,}$")
_JSON_LINE = re.compile(r'^(?:[{}\[\]],?|}\],?|"[^"]*":.*|"[^"]*",?)$')


class ProgressFilter:
    """A write-only text stream: filtered lines to ``terminal``, all lines to ``log_file``.

    ``total``: the number of steps the run will execute (for "[k/total]" counters).
    """

    def __init__(self, terminal=None, log_file=None, total: int | None = None,
                 verbose: bool = False):
        self.terminal = terminal or sys.__stdout__
        self.log_file = log_file
        self.total = total
        self.verbose = verbose
        self.started = time.time()
        self.step = 0
        self._buffer = ""
        self._in_outputs = False
        self._lock = threading.Lock()

    # -- the stream interface ---------------------------------------------------------
    def write(self, text: str) -> int:
        with self._lock:
            if self.log_file is not None and not self.log_file.closed:
                self.log_file.write(text)
            self._buffer += text
            while "\n" in self._buffer:
                line, self._buffer = self._buffer.split("\n", 1)
                self._line(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self.log_file is not None and not self.log_file.closed:
                self.log_file.flush()
            self.terminal.flush()

    def isatty(self) -> bool:
        return False

    # -- filtering --------------------------------------------------------------------
    def _elapsed(self) -> str:
        seconds = int(time.time() - self.started)
        return f"{seconds // 60:02d}:{seconds % 60:02d}"

    def _emit(self, text: str) -> None:
        self.terminal.write(text + "\n")
        self.terminal.flush()

    def _line(self, raw: str) -> None:
        if self.verbose:
            self._emit(raw)
            return
        line = _ANSI.sub("", raw).rstrip()
        text = line.strip()
        if self._in_outputs:
            if re.fullmatch(r"-{20,}", text):
                self._in_outputs = False
            return
        if match := _START.search(line):
            self.step += 1
            of = f"/{self.total}" if self.total else ""
            self._emit(f"[{self._elapsed()}] step {self.step}{of}: {match.group(1)} ...")
            return
        if match := _END.search(line):
            self._emit(f"[{self._elapsed()}] {match.group(1)}: {match.group(2)}")
            return
        if _OUTPUTS.search(line):
            self._in_outputs = line.rstrip().endswith("outputs:")
            return
        if match := _RUN_END.search(line):
            self._emit(f"[{self._elapsed()}] pipeline {match.group(1)}: {match.group(2)}")
            return
        if not text or _NOISE.search(text) or _JSON_LINE.match(text):
            return
        self._emit("    " + text)
