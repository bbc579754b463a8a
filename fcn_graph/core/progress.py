"""A one-line progress display: count, rate and ETA, redrawn in place on a terminal."""

import sys
import time


def format_seconds(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


class Progress:
    """`update(done, **fields)` redraws `label done/total rate ETA fields`
    (`label done rate fields` when `total` is None: a count not known ahead).

    On a terminal the line is redrawn in place; otherwise (logs, CI) a line is
    printed at most every `every` seconds and at the end.
    """

    def __init__(self, total, *, label="", unit="it", start=0, stream=None, every=10.0):
        self.total = total
        self.label = label
        self.unit = unit
        self.start_count = start
        self.stream = stream or sys.stderr
        self.every = every
        self.start_time = time.perf_counter()
        self.last_print = 0.0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.line_open = False

    def line(self, done, fields):
        elapsed = time.perf_counter() - self.start_time
        rate = (done - self.start_count) / elapsed if elapsed > 0 else 0.0
        count = f"{done}" if self.total is None else f"{done}/{self.total}"
        parts = [self.label, count] if self.label else [count]
        parts += [f"{key} {value}" for key, value in fields.items()]
        parts.append(f"{rate:.2f} {self.unit}/s")
        if rate > 0 and self.total is not None and self.total > done:
            parts.append(f"ETA {format_seconds((self.total - done) / rate)}")
        parts.append(f"elapsed {format_seconds(elapsed)}")
        return "  ".join(parts)

    def update(self, done, **fields):
        now = time.perf_counter()
        final = self.total is not None and done >= self.total
        if self.tty:
            self.stream.write("\r\033[K" + self.line(done, fields) + ("\n" if final else ""))
            self.stream.flush()
            self.line_open = not final
        elif final or now - self.last_print >= self.every:
            self.stream.write(self.line(done, fields) + "\n")
            self.stream.flush()
            self.last_print = now

    def write(self, text, file=None):
        """Print a message line (to stdout unless `file`) without garbling the
        progress line."""
        if self.line_open:
            self.stream.write("\r\033[K")
            self.stream.flush()
        print(text, file=file or sys.stdout, flush=True)

    def close(self):
        if self.line_open:
            self.line_open = False
            self.stream.write("\n")
            self.stream.flush()
