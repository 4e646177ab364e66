"""A griffe extension: read the package's Dramatiq-style docstrings as mkdocstrings renders them.

The package documents itself the way Dramatiq does, for Sphinx and napoleon; this extension
bridges the three differences, once the package is loaded and before any docstring is parsed:

- Sphinx roles (``:class:`~pkg.mod.Name```, ``:meth:`name```, ``:data:`NAME```) become autorefs
  links (``[`Name`][pkg.mod.Name]``), resolved as Sphinx resolves them: relative to the documented
  object's class, then its module.  A role whose target is not rendered on the site is a broken
  reference, which fails the strict build.
- ``#:`` comments above a module or class attribute become its docstring, as in Sphinx autodoc.
- A ``Parameters:`` entry with a type and no description (``message_id(str)``) gets the colon that
  the Google-style parser needs to read it as an entry.
- An ``Example:`` section (napoleon's name) is read as ``Examples:``, so that its ``>>>`` lines render
  as code rather than as nested quotes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|const|mod|obj|exc):`(?P<target>[^`]+)`")
_SECTION = re.compile(r"^(?P<indent>\s*)(?:Parameters|Params|Args|Arguments|Attributes|Other Parameters):\s*$")
_BARE_ENTRY = re.compile(r"^(?P<entry>\s+\*{0,2}\w+\s*\([^)]*\))\s*$")
_EXAMPLE = re.compile(r"^(?P<indent>\s*)Example:\s*$", flags=re.MULTILINE)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _objects(pkg):
            if obj.docstring is None and obj.is_attribute:
                _docstring_from_comments(obj)
            if obj.docstring is not None:
                text = _ROLE.sub(lambda match, obj=obj: _link(obj, match["target"]), obj.docstring.value)
                text = _EXAMPLE.sub(lambda match: match["indent"] + "Examples:", text)
                obj.docstring.value = _complete_bare_entries(text)


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_objects(member))  # type: ignore[arg-type]
    return found


def _docstring_from_comments(obj: griffe.Object) -> None:
    if obj.lineno is None:
        return
    lines = obj.module.lines
    comments: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        comments.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    if comments:
        obj.docstring = griffe.Docstring(" ".join(comments), lineno=index + 2, parent=obj)


def _complete_bare_entries(text: str) -> str:
    lines = text.splitlines()
    section_indent: int | None = None
    for number, line in enumerate(lines):
        section = _SECTION.match(line)
        if section:
            section_indent = len(section["indent"])
            continue
        if section_indent is not None and line.strip() and len(line) - len(line.lstrip()) <= section_indent:
            section_indent = None  # the section ended
        if section_indent is not None:
            bare = _BARE_ENTRY.match(line)
            if bare:
                lines[number] = bare["entry"] + ":"
    return "\n".join(lines)


def _link(obj: griffe.Object, target: str) -> str:
    shorten = target.startswith("~")
    target = target.lstrip("~")
    path = _resolve(obj, target)
    text = target.rsplit(".", 1)[-1] if shorten else target.lstrip(".")
    return "[`%s`][%s]" % (text, path)


def _resolve(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj``'s docstring."""
    module = obj.module
    if target.startswith("."):  # relative to the module's package
        base = module.path if module.is_init_module else module.parent.path  # type: ignore[union-attr]
        return base + target
    scopes = []
    if obj.is_class:
        scopes.append(obj)
    elif obj.parent is not None and obj.parent.is_class:
        scopes.append(obj.parent)
    scopes.append(module)
    for scope in scopes:
        try:
            return scope[target].canonical_path
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return target  # an absolute path, or a broken reference that the strict build reports
