"""Sphinx configuration for the implicitvi documentation.

Build from the repository root with::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
from pathlib import Path

# Import the package from the source tree, so the docs build without installing it.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import implicitvi  # noqa: E402
from sphinx.util.nodes import make_refnode  # noqa: E402

# -- Project information -----------------------------------------------------

project = "implicitvi"
author = "implicitvi contributors"
copyright = "implicitvi contributors"
release = implicitvi.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration ---------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {
    ".rst": "restructuredtext",
    ".md": "markdown",
}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
nitpicky = False

# -- autodoc / napoleon ------------------------------------------------------

autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- MyST (Markdown pages) ---------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# -- HTML output -------------------------------------------------------------

html_theme = "alabaster"
html_title = f"implicitvi {release}"
# Only list the static folder when it exists: a missing entry is a build warning.
html_static_path = ["_static"] if (Path(__file__).parent / "_static").is_dir() else []


# -- Dataclass signatures ----------------------------------------------------
#
# The estimators and networks are frozen dataclasses whose ``__init__`` is generated, so
# ``autodoc_preserve_defaults`` cannot recover the defaults as written and autodoc would print
# their repr (e.g. the tuple of functions inside ``optax.adam(1e-3)``). Rebuild the class
# signature from the field defaults as they appear in the source.


def _dataclass_defaults_source(cls) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source)
    defaults = {}
    for node in tree.body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            defaults[node.target.id] = ast.get_source_segment(source, node.value)
    return defaults


def _dataclass_signature(app, what, name, obj, options, signature, return_annotation):
    if what != "class" or not dataclasses.is_dataclass(obj) or not isinstance(obj, type):
        return None
    written = _dataclass_defaults_source(obj)
    params = []
    for field in dataclasses.fields(obj):
        if not field.init:
            continue
        if field.name in written:
            params.append(f"{field.name}={written[field.name]}")
        elif field.default is not dataclasses.MISSING:
            params.append(f"{field.name}={field.default!r}")
        else:
            params.append(field.name)
    return f"({', '.join(params)})", return_annotation


# -- Short cross-references in docstrings ------------------------------------
#
# Docstrings refer to re-exported objects by short names (``:func:`estimate_score``` inside
# ``implicitvi.estimators``, documented as ``implicitvi.estimate_score``). Resolve such a
# reference when exactly one documented object ends with that name; leave it as plain text
# otherwise.


def _resolve_short_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    matches = domain.find_obj(
        env,
        node.get("py:module"),
        node.get("py:class"),
        node["reftarget"],
        node["reftype"],
        searchmode=1,
    )
    # A class documented under its re-export also has its canonical name as an alias entry.
    targets = {(entry.docname, entry.node_id): (name, entry) for name, entry in matches}
    if len(targets) != 1:
        return None
    name, entry = next(iter(targets.values()))
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name)


def setup(app):
    app.connect("autodoc-process-signature", _dataclass_signature)
    app.connect("missing-reference", _resolve_short_reference)
