"""The toggle combinations the template is tested with.

Every combination is checked against the pre-gen hook's own rules, so the
tests can never bake a combination the template refuses, and the pairwise set
is recomputed from those rules whenever they change.
"""

from __future__ import annotations

import importlib.util
import itertools
from functools import cache
from types import ModuleType
from typing import Any

from helpers import TEMPLATE_DIR


@cache
def hook(name: str) -> ModuleType:
    """Import a hook script by path: it is plain Python, answers arrive as data."""
    spec = importlib.util.spec_from_file_location(name, TEMPLATE_DIR / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOGGLES: tuple[str, ...] = hook("pre_gen_project").TOGGLES
ALL_ON = dict.fromkeys(TOGGLES, True)
ALL_OFF = dict.fromkeys(TOGGLES, False)


def is_valid(toggles: dict[str, bool]) -> bool:
    pre = hook("pre_gen_project")
    try:
        pre._check_toggles(toggles)
    except pre.InvalidAnswer:
        return False
    return True


def without(*names: str) -> dict[str, bool]:
    """All on, except `names` and every toggle that needs one of them."""
    pre = hook("pre_gen_project")
    toggles = dict(ALL_ON)
    for name in names:
        toggles[name] = False
    changed = True
    while changed:  # switch off dependants until the rules hold
        changed = False
        for toggle, needs, _ in pre.REQUIRES:
            if toggles[toggle] and not all(toggles[n] for n in needs):
                toggles[toggle] = False
                changed = True
        for toggle, any_of, _ in pre.REQUIRES_ANY:
            if toggles[toggle] and not any(toggles[n] for n in any_of):
                toggles[toggle] = False
                changed = True
    assert is_valid(toggles)
    return toggles


def pairwise() -> list[dict[str, bool]]:
    """A small set of valid combinations covering every reachable pair of values."""
    valid = [
        dict(zip(TOGGLES, values, strict=True)) for values in itertools.product((True, False), repeat=len(TOGGLES))
    ]
    valid = [combo for combo in valid if is_valid(combo)]

    def pairs(combo: dict[str, bool]) -> set[tuple[str, bool, str, bool]]:
        return {(a, combo[a], b, combo[b]) for a, b in itertools.combinations(TOGGLES, 2)}

    uncovered = set().union(*(pairs(c) for c in valid))
    chosen: list[dict[str, bool]] = []
    while uncovered:
        best = max(valid, key=lambda c: (len(pairs(c) & uncovered), -sum(c.values())))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


def combo_id(toggles: dict[str, Any]) -> str:
    off = [name.removeprefix("use_") for name in TOGGLES if not toggles.get(name, True)]
    if not off:
        return "all-on"
    if len(off) == len(TOGGLES):
        return "all-off"
    return "without-" + "-".join(off)


def matrix() -> list[dict[str, bool]]:
    """Default, everything off, each toggle off alone (with its dependants), pairwise."""
    combos = [ALL_ON, ALL_OFF, *(without(t) for t in TOGGLES), *pairwise()]
    unique: dict[str, dict[str, bool]] = {}
    for combo in combos:
        unique.setdefault(combo_id(combo), combo)
    return list(unique.values())
