"""Imports run one way: every module of ``mlp_torch`` imports only its own layer or lower ones.

The layers are the ones ``mlp_torch/__init__.py`` states (and the README's Layout section):

    base      errors, utils, metrics                  (anyone may import these)
    ops       functional, optim, finite_difference, gradcheck
    models    models/, compare
    data      data/
    training  training/, bench
    sweep     sweep/
    commands  commands/, cli, __main__

Every import counts: absolute and relative, at the top of a module or inside a function (where
heavy imports wait until they are needed). argparse belongs to the command line alone, and the
commands share their parser helpers through ``commands/_common.py``, never through ``cli``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mlp_torch

PACKAGE = Path(mlp_torch.__file__).parent

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("mlp_torch", "mlp_torch.errors", "mlp_torch.utils", "mlp_torch.metrics")),
    ("ops", ("mlp_torch.functional", "mlp_torch.optim", "mlp_torch.finite_difference", "mlp_torch.gradcheck")),
    ("models", ("mlp_torch.models", "mlp_torch.compare")),
    ("data", ("mlp_torch.data",)),
    ("training", ("mlp_torch.training", "mlp_torch.bench")),
    ("sweep", ("mlp_torch.sweep",)),
    ("commands", ("mlp_torch.commands", "mlp_torch.cli", "mlp_torch.__main__")),
)
# Modules only the command line may import, and who that is.
COMMAND_LINE_ONLY = ("argparse",)
COMMAND_LINE = ("mlp_torch.cli", "mlp_torch.commands")


def layer_of(module: str) -> int:
    """The index of ``module``'s layer in :data:`LAYERS` (the package itself is base: it holds ``__version__``)."""
    for rank, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member != "mlp_torch" and module.startswith(member + ".")):
                return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS here and to mlp_torch/__init__.py's table")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()


def imports_of(module: str, source: str, known: set[str]) -> set[str]:
    """Every module ``source`` imports, by absolute name; ``from pkg import sub`` counts as ``pkg.sub``.

    Args:
        module: the importing module's name (for relative imports).
        source: its Python source.
        known: the names of every module in the package (to tell a submodule from an attribute).
    """
    package = module if is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{alias.name}" for alias in node.names if f"{origin}.{alias.name}" in known)
    return found


def package_imports() -> dict[str, set[str]]:
    """``{module: the modules it imports}`` for every module of ``mlp_torch``."""
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(module_name(p), p.read_text(), known) for p in paths}


def violations(imports: dict[str, set[str]]) -> list[str]:
    """One line per import that breaks the rules in this module's docstring; empty if none does."""
    found = []
    for module, imported in sorted(imports.items()):
        rank = layer_of(module)
        command_line = any(module == c or module.startswith(c + ".") for c in COMMAND_LINE)
        for target in sorted(imported):
            if target.split(".")[0] in COMMAND_LINE_ONLY and not command_line:
                found.append(f"{module} imports {target}, which only {' and '.join(COMMAND_LINE)} may import")
            if not (target == "mlp_torch" or target.startswith("mlp_torch.")):
                continue
            if layer_of(target) > rank:
                found.append(
                    f"{module} ({LAYERS[rank][0]}) imports {target} ({LAYERS[layer_of(target)][0]}), a higher layer"
                )
            if module.startswith("mlp_torch.commands") and target == "mlp_torch.cli":
                found.append(f"{module} imports {target}; commands share helpers through mlp_torch.commands._common")
    return found


# ------------------------------------------------------------------------------ the package itself


def test_imports_run_one_way():
    problems = violations(package_imports())
    assert not problems, "imports against the layering:\n  " + "\n  ".join(problems)


def test_every_module_is_in_a_layer():
    for module in package_imports():
        layer_of(module)


def test_the_package_docstring_states_the_same_layers():
    """``mlp_torch/__init__.py`` lists each layer as ``name: module, module, ...``: the same as LAYERS."""
    stated = dict(re.findall(r"^\s+(\w+):\s+(.+?)\s*(?:\(.*\))?$", mlp_torch.__doc__ or "", flags=re.M))
    for name, members in LAYERS:
        short = [m.removeprefix("mlp_torch.") for m in members if m != "mlp_torch"]
        listed = [m.strip().rstrip("/") for m in stated.get(name, "").split(",")]
        assert listed == short, f"mlp_torch/__init__.py says {name}: {stated.get(name)!r}; the test has {short}"


def test_cli_imports_the_commands_statically():
    source = (PACKAGE / "cli.py").read_text()
    assert "importlib" not in source and "__import__" not in source


# ------------------------------------------------------------------------------ the checker catches what it should


def test_the_checker_names_an_import_of_a_higher_layer():
    planted = {
        "mlp_torch.models.mlp": {"torch", "mlp_torch.functional", "mlp_torch.training.config"},
        "mlp_torch.training.trainer": {"mlp_torch.models", "mlp_torch.data.bundle", "mlp_torch.compare"},
    }
    assert violations(planted) == [
        "mlp_torch.models.mlp (models) imports mlp_torch.training.config (training), a higher layer"
    ]


def test_the_checker_names_argparse_outside_the_command_line_and_commands_importing_cli():
    planted = {
        "mlp_torch.data.options": {"argparse", "mlp_torch.errors"},
        "mlp_torch.commands.train": {"argparse", "mlp_torch.cli", "mlp_torch.commands._common"},
        "mlp_torch.cli": {"argparse", "mlp_torch.commands.train"},
    }
    assert violations(planted) == [
        "mlp_torch.commands.train imports mlp_torch.cli; commands share helpers through mlp_torch.commands._common",
        "mlp_torch.data.options imports argparse, which only mlp_torch.cli and mlp_torch.commands may import",
    ]


def test_imports_inside_functions_and_relative_imports_are_found():
    source = (
        "from __future__ import annotations\n"
        "from . import manual\n"
        "from .. import functional as MF\n"
        "from ..errors import UsageError\n"
        "def later():\n"
        "    from ..training import config\n"
        "    import argparse\n"
    )
    known = {"mlp_torch.models.manual", "mlp_torch.functional", "mlp_torch.errors", "mlp_torch.training.config"}
    found = imports_of("mlp_torch.models.mlp", source, known)
    assert found == {
        "__future__",
        "mlp_torch.models",
        "mlp_torch.models.manual",
        "mlp_torch",
        "mlp_torch.functional",
        "mlp_torch.errors",
        "mlp_torch.training",
        "mlp_torch.training.config",
        "argparse",
    }
    assert violations({"mlp_torch.models.mlp": found}) == [
        "mlp_torch.models.mlp imports argparse, which only mlp_torch.cli and mlp_torch.commands may import",
        "mlp_torch.models.mlp (models) imports mlp_torch.training (training), a higher layer",
        "mlp_torch.models.mlp (models) imports mlp_torch.training.config (training), a higher layer",
    ]


def test_a_module_outside_every_layer_is_an_error_that_says_where_to_add_it():
    try:
        layer_of("mlp_torch.plugins")
    except AssertionError as err:
        assert "add it to LAYERS" in str(err)
    else:
        raise AssertionError("mlp_torch.plugins was given a layer")
