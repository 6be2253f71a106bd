"""Command-line entry: ``python -m neuralstyle.tune`` measures which convolution paths are fastest
on this machine and caches the choice (:mod:`neuralstyle.tuning`), which ``backbone.conv=auto``,
the optimization driver and the feed-forward networks' ``conv_backend="auto"`` then use.

    python -m neuralstyle.tune              # measure (about a minute on 2 cores) and save
    python -m neuralstyle.tune --show       # this machine's cached tuning, and the file
    python -m neuralstyle.tune --forget     # drop this machine's entry (back to the fixed rule)
    python -m neuralstyle.tune --dry-run    # measure and print, save nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")


def describe(record: dict) -> str:
    """A short account of a tuning record's choices."""
    pairs = ", ".join(f"{cin}->{cout}" for cin, cout in record["winograd_channels"]) or "none"
    return (f"Winograd for the 3x3 convolutions with channels {pairs} (backbone.conv=auto); "
            f"optimization programs: {record['step_conv_backend']} convolutions; feed-forward "
            f"networks: {record['fast_conv_backend']} (measured {record.get('date', '?')} at "
            f"{record.get('size', '?')} px / {record.get('fast_size', '?')} px)")


def main(argv=None) -> int:
    from . import tuning
    from .errors import NeuralStyleError

    p = argparse.ArgumentParser(prog="python -m neuralstyle.tune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256, help="optimization image side the VGG19 "
                   "convolutions are timed at (default 256)")
    p.add_argument("--fast-size", type=int, default=512, help="image side of the feed-forward "
                   "network's apply (default 512)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per choice, alternating (default 5)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--show", action="store_true", help="print this machine's cached tuning")
    group.add_argument("--forget", action="store_true", help="remove this machine's cached tuning")
    group.add_argument("--dry-run", action="store_true", help="measure and print; save nothing")
    args = p.parse_args(argv)
    path = tuning.tuning_file()
    try:
        if args.show:
            record = tuning.load_tuning(path)
            print(f"tuning file: {path}\nmachine: {json.dumps(tuning.machine_fingerprint())}")
            print(describe(record) if record else "no tuning for this machine: the fixed rule applies "
                  "(python -m neuralstyle.tune measures it)")
            return 0
        if args.forget:
            removed = tuning.forget_tuning(path)
            print(f"{'removed this machine from' if removed else 'nothing to remove in'} {path}")
            return 0
        record = tuning.tune(args.size, args.fast_size, args.repeats,
                             log=lambda m: print(m, file=sys.stderr, flush=True))
        print(describe(record))
        if not args.dry_run:
            print(f"saved to {tuning.save_tuning(record, path)}")
        return 0
    except NeuralStyleError as err:
        print(f"tune: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
