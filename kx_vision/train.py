"""Train a task: `python -m kx_vision.train TASK [--config FILE] [--set key=value ...] [--output DIR]`.

The command line of `kx_vision.training.trainer`: it parses the arguments, reads the config (YAML file, then
`--set` overrides, every key checked) and calls `trainer.fit` (or `trainer.find_learning_rate`). What a
run writes and how it resumes is described there and in the README's "What happens when...".
"""

import argparse
import os
import sys
import textwrap

from kx_vision import cli
from kx_vision import config as config_lib
from kx_vision.tasks import TASKS, get_task


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m kx_vision.train",
        description="Train a kx_vision model. The Keras backend is chosen with KERAS_BACKEND "
        "(tensorflow or jax).",
    )
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for name in TASKS:
        task = get_task(name)
        keys = "\n".join(textwrap.fill(line, width=118, subsequent_indent=" " * 6)
                         for line in config_lib.describe(task.Config))
        p = sub.add_parser(
            name,
            help=task.describe(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=f"config keys (set with --set key=value or in a --config YAML file):\n{keys}",
        )
        p.add_argument("--config", metavar="FILE", help="YAML file of config values (`base: other.yaml` extends one)")
        p.add_argument(
            "--set", metavar="KEY=VALUE", action="append", default=[], dest="assignments",
            help="override one config key (repeatable); lists: comma-separated",
        )
        p.add_argument("--output", metavar="DIR", default=None, help=f"output folder (default: runs/{name})")
        p.add_argument("--find-lr", action="store_true",
                       help="run the learning-rate range test instead of training (weights are not kept)")
        p.add_argument("--find-lr-steps", type=int, default=200, metavar="N",
                       help="steps of the range test (default: %(default)s)")
        p.add_argument("--overwrite", action="store_true",
                       help="train from scratch even if the output folder holds a run (its files are replaced)")
        cli.add_verbose_argument(p)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # Before the parser: building it imports the tasks' configs (no framework), and a run imports Keras.
    cli.quiet_start_from_argv(argv)
    args = _parser().parse_args(argv)

    def command():
        from kx_vision.training import trainer

        task = get_task(args.task)
        config = config_lib.load(task.Config, args.config, args.assignments)
        output = args.output or os.path.join("runs", args.task)
        if args.find_lr:
            trainer.find_learning_rate(task, config, output, args.find_lr_steps)
        else:
            trainer.fit(task, config, output, overwrite=args.overwrite)

    return cli.run(command, interrupted="interrupted: rerun the same command to resume from the last finished epoch")


if __name__ == "__main__":
    sys.exit(main())
