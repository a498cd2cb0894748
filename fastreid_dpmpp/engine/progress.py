"""Progress of a long child process, readable on a terminal and in a log file.

On a terminal (``stream.isatty()``) a tqdm bar is redrawn in place; otherwise (nohup, CI, ``> log``) one
plain line is written per epoch, with the loss and the ETA, so a log holds one readable line per epoch
instead of hundreds of carriage-return segments.
"""
import sys
import time

from tqdm import tqdm

__all__ = ["EpochProgress", "format_seconds"]


def format_seconds(seconds):
    seconds = int(max(0, round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class EpochProgress:
    """``report(epoch, loss, eta)`` as a child process advances; ``finish()`` at the end.

    Args:
        label: shown before every line / on the bar, e.g. "[II: salient patch selection]".
        total_epochs: number of epochs, or None when unknown.
        stream: where to write (default sys.stdout).
    """

    def __init__(self, label, total_epochs=None, stream=None):
        self.label = label
        self.total = int(total_epochs) if total_epochs else None
        self.stream = stream or sys.stdout
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.time()
        self.last_epoch = None
        self.bar = None
        if self.interactive:
            self.bar = tqdm(total=self.total, desc=f"  {label}", unit="epoch", file=self.stream, dynamic_ncols=True,
                            bar_format="{desc} {n_fmt}/{total_fmt} epochs |{bar}| {postfix}", leave=False)

    def report(self, epoch, loss=None, eta=None):
        """``epoch``: the epoch in progress (0-based, or 1-based as the child logs it); ``eta``: seconds or text."""
        epoch = int(epoch)
        eta_text = format_seconds(eta) if isinstance(eta, (int, float)) else (eta or "?")
        loss_text = f"loss {loss:.3f}" if isinstance(loss, float) else f"loss {loss}" if loss is not None else ""
        if self.bar is not None:
            self.bar.update(max(0, epoch - self.bar.n))
            self.bar.set_postfix_str(f"{loss_text} eta {eta_text}".strip())
            return
        if epoch != self.last_epoch:
            of = f"/{self.total}" if self.total else ""
            print(f"  {self.label} epoch {epoch}{of} {loss_text} eta {eta_text}".rstrip(), file=self.stream, flush=True)
        self.last_epoch = epoch

    def finish(self, message=None):
        if self.bar is not None:
            self.bar.close()
        text = message or f"finished in {time.time() - self.start:.0f} s"
        print(f"  {self.label} {text}", file=self.stream, flush=True)
