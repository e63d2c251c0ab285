"""Write a full params.yaml from a preset.

    python -m params --preset smoke            # prints it
    python -m params --preset smoke -o params.yaml
    python -m params --check params.yaml       # validate, and build what every stage would build from it
                                               # (no data, no training); exit 2 naming the field when invalid
"""
from __future__ import annotations

import argparse
import sys

from params import PRESETS, ParamsError, dump_params, load_params, preset
from guide.io import atomic_write_text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m params", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS)
    ap.add_argument("--method", help="override run.method")
    ap.add_argument("--seed", type=int, help="override run.seed")
    ap.add_argument("-o", "--output", help="write here instead of printing")
    ap.add_argument("--check", metavar="PARAMS_YAML", help="validate a params file")
    args = ap.parse_args(argv)
    try:
        if args.check:  # what every stage would build from it, too (stages.construct)
            from stages.construct import check_constructs

            check_constructs(load_params(args.check), args.check)
            print(f"{args.check}: valid")
            return 0
        if not args.preset:
            ap.error("give --preset NAME or --check FILE")
        run = {k: v for k, v in (("method", args.method), ("seed", args.seed)) if v is not None}
        text = dump_params(preset(args.preset, run=run))
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
