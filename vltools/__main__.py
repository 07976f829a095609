"""``python -m vltools convert SOURCE DEST``: write a complete native checkpoint.

SOURCE is an original InternVL2 checkpoint (a Hub id such as ``OpenGVLab/InternVL2-1B``, a
local folder) or ``tiny``; DEST is a new folder that stock transformers
(``AutoProcessor`` + ``AutoModelForImageTextToText``) and engines that read native InternVL
checkpoints load without remote code. See :mod:`vltools.export`.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vltools",
        description="vltools command line: convert InternVL2 checkpoints to transformers' "
        "native format.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    convert = commands.add_parser(
        "convert",
        help="write a native checkpoint (weights, config, tokenizer, processor, chat template, "
        "generation config) that stock transformers and serving engines load",
        description="Load SOURCE (original InternVL2 or native format) and write a complete "
        "native checkpoint into DEST: model.safetensors, config.json, tokenizer, "
        "processor_config.json, preprocessor_config.json (the model's max_num/min_num), "
        "chat_template.jinja (the model's conversation template) and generation_config.json "
        "(its stop tokens).",
    )
    convert.add_argument("source", metavar="SOURCE", help="Hub id, local folder, 'tiny' or 'toy'")
    convert.add_argument("dest", metavar="DEST", help="folder to write (new or empty)")
    convert.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights dtype to write (default: the dtype SOURCE's config names)",
    )
    convert.add_argument("--revision", default=None, help="Hub revision (branch, tag, commit)")
    convert.add_argument(
        "--overwrite", action="store_true", help="replace the checkpoint files if DEST has some"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from vltools.export import convert

    try:
        report = convert(
            args.source,
            args.dest,
            dtype=args.dtype,
            overwrite=args.overwrite,
            revision=args.revision,
        )
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {report.path}: {', '.join(report.files)}")
    for note in report.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
