"""The registry of generators: one folder per built-in generator below this package, plus the user's.

A generator is named by
- a built-in name: `math-programs`, `retrieval-queries`, `cot-rewrites`, `preference-labels`;
- an installed package's entry point in the group `datagen.generators`
  (pyproject.toml: `[project.entry-points."datagen.generators"] my-gen = "my_pkg.gen:MyGenerator"`);
- a reference `path/to/file.py:ClassName` or `package.module:ClassName`.

The CLI (`datagen run <name>` / `datagen run --generator REF`), recipes (`flow: REF`) and the generic
Prefect flow (flows/generate.py) all resolve names here, so a user's generator gets the same engines,
resume, lineage, tables, SQL, recipes and schedules as the built-in ones.

Example: load_generator("examples/passage_qa/generator.py:PassageQA").Settings.model_fields
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from tasks.runtime.generator import Generator

BUILTIN = {
    "math-programs": "tasks.generators.math_programs:MathPrograms",
    "retrieval-queries": "tasks.generators.retrieval_queries:RetrievalQueries",
    "cot-rewrites": "tasks.generators.cot_rewrites:CotRewrites",
    "preference-labels": "tasks.generators.preference_labels:PreferenceLabels",
}
ENTRY_POINT_GROUP = "datagen.generators"


def installed() -> dict[str, str]:
    """Name -> reference of every generator that has a name: built-in, then installed entry points."""
    found = dict(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def is_reference(text: str) -> bool:
    return ":" in text


def load_generator(name_or_ref: str) -> type[Generator]:
    """The generator class a name or `file.py:Class` / `module:Class` reference names."""
    ref = installed().get(name_or_ref, name_or_ref)
    if not is_reference(ref):
        raise ValueError(f"unknown generator {name_or_ref!r} (known: {', '.join(installed())}; "
                         "or give path/to/file.py:ClassName)")
    where, _, attr = ref.rpartition(":")
    module = _import_file(where) if where.endswith(".py") else importlib.import_module(where)
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise ValueError(f"{ref}: {attr!r} is not a Generator subclass (tasks.runtime.Generator)")
    missing = [a for a in ("name", "table", "Settings") if not hasattr(cls, a)]
    if missing:
        raise ValueError(f"{ref}: the generator does not set {', '.join(missing)}")
    return cls


def _import_file(path: str):
    """Import a user's generator file as a module named after it. Ray workers cannot import that
    module, so its functions and classes travel to them by value (cloudpickle's supported way)."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ValueError(f"generator file not found: {path}")
    name = f"datagen_user_{file.parent.name}_{file.stem}"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(file):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    return module
