"""Rebuild the tables of ``docs/benchmarks.md`` from ``benchmarks/results/*.json``.

Every results file holds ``results["tables"]``, a dict of tables by name (``header``, ``rows``,
``align``; see ``common.table``). A table ``T`` of the file ``NAME.json`` goes between the
markers ``<!-- render:NAME/T -->`` and ``<!-- /render:NAME/T -->``; everything outside markers
is left as it is.

Usage::

    python benchmarks/render.py            # rewrite docs/benchmarks.md
    python benchmarks/render.py --check    # exit 1 if it differs from what would be written
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from common import RESULTS, markdown_table, read_json

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
BLOCK = re.compile(r"(<!-- render:(\S+) -->\n).*?(<!-- /render:\2 -->)", re.DOTALL)


def tables(results_dir: Path = RESULTS) -> dict[str, str]:
    """Every rendered table by marker name, ``NAME/T``."""
    out = {}
    for path in sorted(Path(results_dir).glob("*.json")):
        data = read_json(path)
        for name, tbl in data["results"].get("tables", {}).items():
            out[f"{path.stem}/{name}"] = markdown_table(**tbl)
    return out


def render(text: str, rendered: dict[str, str]) -> str:
    """``text`` with the body of every marker block replaced; ``KeyError`` names a marker
    without a table."""

    def body(match):
        return f"{match.group(1)}{rendered[match.group(2)]}\n{match.group(3)}"

    return BLOCK.sub(body, text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    p.add_argument("--docs", type=Path, default=DOCS, help="the markdown file")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of results files")
    args = p.parse_args(argv)
    text = args.docs.read_text()
    new = render(text, tables(args.results))
    if args.check:
        if new != text:
            print(f"{args.docs} is not what render.py writes; run it", file=sys.stderr)
            return 1
        return 0
    args.docs.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
