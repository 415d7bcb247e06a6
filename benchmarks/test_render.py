"""render.py: the documented tables are what the results files hold, and only marked blocks change."""

import shutil

import render
from common import table, write_json


def test_docs_match_results(tmp_path):
    docs = tmp_path / "benchmarks.md"
    shutil.copy(render.DOCS, docs)
    assert render.main(["--check", "--docs", str(docs)]) == 0
    assert render.main(["--docs", str(docs)]) == 0
    assert docs.read_text() == render.DOCS.read_text()


def test_only_marked_blocks_change(tmp_path):
    results = tmp_path / "results"
    write_json("demo", {"tables": {"t": table(["a", "b"], [[1, "x"]], "lr")}},
               results / "demo.json")
    docs = tmp_path / "doc.md"
    docs.write_text("prose | kept\n\n<!-- render:demo/t -->\nold\n<!-- /render:demo/t -->\nend\n")
    assert render.main(["--check", "--docs", str(docs), "--results", str(results)]) == 1
    render.main(["--docs", str(docs), "--results", str(results)])
    assert docs.read_text() == (
        "prose | kept\n\n<!-- render:demo/t -->\n| a | b |\n|:---|---:|\n| 1 | x |\n"
        "<!-- /render:demo/t -->\nend\n")
    assert render.main(["--check", "--docs", str(docs), "--results", str(results)]) == 0
