"""``compress report DIR``: collect the ``results.json`` of a run or a multirun into one table.

The work is ``compress.results``; this module parses, calls and prints.
"""

from __future__ import annotations

from compress.cli import CliError


def run(args) -> int:
    from compress.errors import ArgumentError
    from compress.results import collect, table

    try:
        text = table(collect(args.dir))
    except ArgumentError as err:
        raise CliError(err.spell({"root": "DIR"})) from None
    except ValueError as err:  # a results.json that is not one: named by its path
        raise CliError(str(err)) from None
    print(text)
    if args.output:
        from compress.atomic import write_text

        write_text(args.output, text + "\n")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="collect the results of compress-train runs into one table",
        description="Find every results.json under DIR (a compress-train run or a -m multirun "
        "directory) and print one Markdown table: WER/CER of the trained and the packed model "
        "per test split, packed size, ratio to fp32, sparsity and training time.",
    )
    p.add_argument("dir", metavar="DIR", help="a run or multirun output directory")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the table to FILE (Markdown)")
    p.set_defaults(func=run)
