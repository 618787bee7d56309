"""The arrows between the packages point down (DESIGN.md, "Suggested
layout"): the pure core imports no I/O, the codec and the store stand
alone, and the HTTP layer reaches the engine only through the protocols
ApiState gives it.

Every module under src/carrierd is parsed with `ast`; every import counts,
at module level or inside a function, absolute or relative.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import carrierd

PACKAGE_ROOT = Path(carrierd.__file__).resolve().parent
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}


@dataclass(frozen=True)
class Rule:
    """Modules under `layer` may import the stdlib, `third_party` top-level
    packages and carrierd modules under one of `carrierd`."""

    layer: str
    why: str
    third_party: frozenset[str] = frozenset()
    carrierd: tuple[str, ...] = ()
    forbidden: tuple[str, ...] = ()
    # Under `forbidden`, yet allowed (the narrow way through).
    forbidden_except: tuple[str, ...] = ()
    stdlib: bool = True


RULES: tuple[Rule, ...] = (
    Rule(
        "carrierd.domain",
        "the pure core does no I/O and depends on nothing but itself, and on the "
        "national number allocation that phonenumbers carries as data",
        third_party=frozenset({"phonenumbers"}),
        carrierd=("carrierd.domain",),
    ),
    Rule(
        "carrierd.smpp",
        "the SMPP layer is a standalone codec and session stack",
        # What smpp already used when the rule was written; adding one is a
        # decision to take here, on purpose.
        third_party=frozenset({"structlog", "tenacity"}),
        carrierd=("carrierd.smpp",),
    ),
    Rule(
        "carrierd.store",
        "the store is the only asyncpg user and serves every layer above it",
        third_party=frozenset({"asyncpg"}),
        carrierd=("carrierd.store", "carrierd.domain"),
    ),
    Rule(
        "carrierd.sim",
        "the simulators stand in for carriers: they share only the wire format "
        "and the domain rules with the daemon",
        third_party=frozenset({"aiohttp", "structlog"}),
        carrierd=("carrierd.sim", "carrierd.smpp.pdu", "carrierd.smpp.writer", "carrierd.domain"),
    ),
    Rule(
        "carrierd.http",
        "the HTTP layer reaches the engine only through ApiState's protocols, "
        "and never the carrier side",
        third_party=frozenset({"aiohttp", "structlog"}),
        carrierd=("carrierd",),
        forbidden=("carrierd.engine", "carrierd.smpp", "carrierd.sim"),
        forbidden_except=("carrierd.engine.lifecycle",),
    ),
    Rule(
        "carrierd.client",
        "the API client speaks HTTP only: it runs on hosts that have neither the "
        "daemon's configuration nor its database",
        third_party=frozenset({"aiohttp"}),
        carrierd=("carrierd.__version__", "carrierd.domain"),
    ),
    Rule(
        "carrierd.client_cli",
        "the client commands reach the daemon through the API client only",
        carrierd=("carrierd.__version__", "carrierd.client", "carrierd.domain"),
    ),
)

# Imports that break a rule today, each with the reason it is tolerated.
# Shrink this list; do not grow it without a note in the review.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset(
    {
        # The SMPP sessions and pools read their bind settings straight from
        # the daemon's CarrierConfig; a settings dataclass of smpp's own,
        # filled in by channels/sms.py, would remove both.
        ("carrierd.smpp.pool", "carrierd.config"),
        ("carrierd.smpp.session", "carrierd.config"),
    }
)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module, absolute
    line: int


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[Import]:
    return imports_of_source(
        path.read_text(encoding="utf-8"),
        module=module_name(path),
        package=path.name == "__init__.py",
    )


def imports_of_source(source: str, *, module: str, package: bool) -> list[Import]:
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, package, node.module, node.level)
            # "from p import x": x may be a module of p (engine.lifecycle)
            # or a name in it; either way the import reaches p.x.
            found.extend(
                Import(module, base if alias.name == "*" else f"{base}.{alias.name}", node.lineno)
                for alias in node.names
            )
    return found


def resolve_from(module: str, is_package: bool, target: str | None, level: int) -> str:
    if level == 0:
        assert target is not None
        return target
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        package = package[: -(level - 1)]
    return ".".join([*package, *([target] if target else [])])


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violation(rule: Rule, found: Import) -> str | None:
    """Why `found` breaks `rule`, or None."""
    target = found.target
    top = target.split(".")[0]
    if top == "carrierd":
        for forbidden in rule.forbidden:
            if within(target, forbidden) and not any(
                within(target, allowed) for allowed in rule.forbidden_except
            ):
                return f"{forbidden}.* is off limits"
        if any(within(target, allowed) for allowed in rule.carrierd):
            return None
        return f"only {', '.join(rule.carrierd)} may be imported from carrierd"
    if top in STDLIB and rule.stdlib:
        return None
    if top in rule.third_party:
        return None
    allowed = ", ".join(sorted(rule.third_party)) or "none"
    return f"third-party package {top!r} is not allowed (allowed: {allowed})"


def all_imports() -> list[Import]:
    found: list[Import] = []
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        found.extend(imports_of(path))
    return found


def is_known_exception(found: Import) -> bool:
    return any(
        found.module == module and within(found.target, target)
        for module, target in KNOWN_EXCEPTIONS
    )


def broken_rules(imports: list[Import]) -> list[str]:
    problems: list[str] = []
    for found in imports:
        for rule in RULES:
            if not within(found.module, rule.layer):
                continue
            why_not = violation(rule, found)
            if why_not is None or is_known_exception(found):
                continue
            problems.append(
                f"{found.module} (line {found.line}) imports {found.target}: {why_not}. "
                f"Rule for {rule.layer}.*: {rule.why}."
            )
    return problems


def test_every_module_keeps_to_its_layer() -> None:
    imports = all_imports()
    assert len({i.module for i in imports}) > 30, "the walk found too few modules"
    problems = broken_rules(imports)
    assert not problems, "import layer rules broken:\n" + "\n".join(problems)


def test_known_exceptions_are_still_needed() -> None:
    imports = all_imports()
    stale = {
        (module, target)
        for module, target in KNOWN_EXCEPTIONS
        if not any(i.module == module and within(i.target, target) for i in imports)
    }
    assert not stale, f"remove these from KNOWN_EXCEPTIONS, they no longer occur: {sorted(stale)}"


@pytest.mark.parametrize(
    ("found", "broken"),
    [
        (Import("carrierd.domain.billing", "carrierd.store", 1), True),
        (Import("carrierd.domain.billing", "carrierd.domain.clock", 1), False),
        (Import("carrierd.domain.billing", "aiohttp", 1), True),
        (Import("carrierd.domain.billing", "datetime", 1), False),
        (Import("carrierd.store.db", "asyncpg.exceptions", 1), False),
        (Import("carrierd.store.db", "carrierd.config", 1), True),
        (Import("carrierd.smpp.pdu", "tenacity", 1), False),
        (Import("carrierd.smpp.pdu", "aiohttp", 1), True),
        (Import("carrierd.sim.smsc", "carrierd.smpp.pdu", 1), False),
        (Import("carrierd.sim.smsc", "carrierd.smpp.session", 1), True),
        (Import("carrierd.http.app", "carrierd.engine.rcs_leg", 1), True),
        (Import("carrierd.http.app", "carrierd.engine.lifecycle", 1), False),
        (Import("carrierd.http.app", "carrierd.engine.lifecycle.Lifecycle", 1), False),
        (Import("carrierd.http.app", "carrierd.engine.rcs_leg.RcsLeg", 1), True),
        (Import("carrierd.http.webhooks", "carrierd.channels.rcs", 1), False),
        (Import("carrierd.http.app", "carrierd.smpp.pool", 1), True),
        (Import("carrierd.ops.gauges", "carrierd.smpp.pool", 1), False),
    ],
)
def test_the_rules_tell_allowed_from_broken(found: Import, broken: bool) -> None:
    assert bool(broken_rules([found])) is broken


def test_function_local_and_relative_imports_are_seen() -> None:
    source = (
        "from . import clock\n"
        "from ..store import db\n"
        "def f() -> None:\n"
        "    import asyncpg\n"
        "    from .numbers import x\n"
    )
    found = imports_of_source(source, module="carrierd.domain.probe", package=False)
    assert {i.target for i in found} == {
        "carrierd.domain.clock",
        "carrierd.store.db",
        "asyncpg",
        "carrierd.domain.numbers.x",
    }
    in_a_package = imports_of_source("from . import pdu\n", module="carrierd.smpp", package=True)
    assert [i.target for i in in_a_package] == ["carrierd.smpp.pdu"]
