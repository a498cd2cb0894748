"""Command-line option types shared by the benchmark scripts (imported as a sibling module)."""
import argparse


def reduction_list(text):
    """'1,4,8' -> [1, 4, 8] (comma-separated, so that trailing KEY VALUE overrides stay unambiguous)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hmg-reduction expects comma-separated integers, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"--hmg-reduction values must be distinct, got {text!r}")
    return values
