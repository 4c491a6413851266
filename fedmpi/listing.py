"""`fedmpi list`: what is registered, one line each -- key, parameters, paper.

Why it reads the registries and nothing else: a method, strategy, dataset or
model registered by a new file (one import line in its package's `__init__.py`)
shows up here without touching this module. The sections:

- compressors: `fedmpi.compressors.REGISTRY` (a `compression.uplink/downlink` given
  as a one-key mapping), plus the stage pipeline (a list of stages);
- stages: `fedmpi.compress.REGISTRY` (the items of such a list);
- strategies: `fedmpi.strategies.REGISTRY` (the top-level `strategy:` key);
- datasets and models: `data.dataset` and `train.model` (no parameters of their own).

The paper is a class's `paper` attribute, else the first sentence of its own
docstring, else of its module's.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Iterable

KINDS = ("compressors", "stages", "strategies", "datasets", "models")


def add_arguments(parser) -> None:
    parser.add_argument("kinds", nargs="*", metavar="KIND",
                        help=f"only these sections ({', '.join(KINDS)}); default: all")


def first_line(text: str | None) -> str:
    """The first sentence of a docstring's first paragraph (which may wrap lines)."""
    paragraph = []
    for line in (text or "").strip().splitlines():
        if not line.strip():
            break
        paragraph.append(line.strip())
    joined = " ".join(paragraph)
    m = re.search(r"\.(\s|$)", joined)
    return joined[: m.start() + 1] if m else joined


def paper_of(obj) -> str:
    """The `paper` attribute, else the first docstring line (own, then the module's)."""
    paper = getattr(obj, "paper", "")
    if isinstance(paper, str) and paper.strip():
        return paper.strip()
    own = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    # a dataclass without a docstring gets its signature as one: not a description
    if own and not own.startswith(f"{getattr(obj, '__name__', '')}("):
        return first_line(own)
    module = sys.modules.get(getattr(obj, "__module__", ""), None)
    return first_line(getattr(module, "__doc__", ""))


def params_of(cls: type) -> str:
    """`name=default, ...` of a plug-in's config parameters (fedmpi.params.describe)."""
    from fedmpi.params import describe

    if not dataclasses.is_dataclass(cls):
        return ""
    return describe(cls)


def _plugins(registry: dict) -> list[tuple[str, str, str]]:
    return [(key, params_of(cls), paper_of(cls)) for key, cls in sorted(registry.items())]


def _compressors() -> list[tuple[str, str, str]]:
    from fedmpi.compressors import REGISTRY
    from fedmpi.compressors.stages import StagePipeline

    rows = _plugins(REGISTRY)
    rows.append(("[stage, ...]", "see stages", paper_of(StagePipeline)))
    return rows


def _stages() -> list[tuple[str, str, str]]:
    from fedmpi.compress import REGISTRY

    return _plugins(REGISTRY)


def _strategies() -> list[tuple[str, str, str]]:
    from fedmpi.strategies import REGISTRY

    return _plugins(REGISTRY)


def _datasets() -> list[tuple[str, str, str]]:
    from fedmpi import data
    from fedmpi.data.registry import loader

    rows = []
    for name in data.available():
        shape, classes = data.describe(name)
        detail = f"input {'x'.join(map(str, shape))}, {classes} classes"
        rows.append((name, detail, paper_of(loader(name))))
    return rows


def _models() -> list[tuple[str, str, str]]:
    from fedmpi.models import registry

    return [(name, "", paper_of(fn)) for name, fn in sorted(registry._BUILDERS.items())]


SECTIONS: dict[str, Callable[[], list[tuple[str, str, str]]]] = {
    "compressors": _compressors, "stages": _stages, "strategies": _strategies,
    "datasets": _datasets, "models": _models,
}


def render(kinds: Iterable[str] = KINDS) -> str:
    """The listing as text: a heading per section, one aligned line per entry."""
    out = []
    for kind in kinds:
        rows = SECTIONS[kind]()
        out.append(f"{kind} ({len(rows)}):")
        width = max((len(k) for k, _, _ in rows), default=0)
        pwidth = min(max((len(p) for _, p, _ in rows), default=0), 60)
        for key, params, paper in rows:
            line = f"  {key:<{width}}  {params or '-':<{pwidth}}"
            out.append(f"{line}  {paper}".rstrip() if paper else line.rstrip())
    return "\n".join(out) + "\n"


def main(args) -> int:
    kinds = list(args.kinds) or list(KINDS)
    bad = [k for k in kinds if k not in SECTIONS]
    if bad:
        print(f"fedmpi list: unknown section {bad[0]!r}; allowed: {', '.join(KINDS)}",
              file=sys.stderr)
        return 2
    sys.stdout.write(render(kinds))
    return 0
