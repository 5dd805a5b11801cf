"""The examples in the models' docstrings run (doctest), and every kind's docstring documents
its parameters (numpy style: Parameters, Attributes, Examples)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
from pathlib import Path

import pytest

import anomaly.models
from anomaly.models import KINDS

MODULES = sorted(p.stem for p in Path(anomaly.models.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(f"anomaly.models.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed (above)"


def documented(cls: type) -> set[str]:
    """Names listed in the Parameters sections of ``cls``'s and its bases' docstrings."""
    names: set[str] = set()
    for klass in cls.__mro__:
        doc = inspect.cleandoc(vars(klass).get("__doc__") or "")
        section = re.search(r"Parameters\n-+\n(.*?)(?:\n\n[A-Z]\w+\n-+\n|\Z)", doc, re.S)
        if section:
            for entry in re.findall(r"^(\w+(?:, \w+)*)(?: :|$)", section.group(1), re.M):
                names |= set(entry.split(", "))
    return names


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_documents_its_parameters_attributes_and_an_example(kind):
    cls = KINDS[kind]
    doc = inspect.cleandoc(cls.__doc__)
    for section in ("Parameters", "Attributes", "Examples"):
        assert f"\n{section}\n{'-' * len(section)}\n" in doc, f"{kind}: no {section} section"
    assert "\n>>> " in doc
    missing = set(cls.parameter_table()) - documented(cls)
    assert not missing, f"{kind}: parameters not in a Parameters section: {sorted(missing)}"
