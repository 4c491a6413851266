"""README "Extending fedmpi" stays true: its example files are executed as the modules they
say they are, register their plug-ins, pass the README's own tests, and show in `fedmpi list`;
the zoo section names commands and make targets that exist."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from fedmpi import compressors, strategies
from fedmpi.cli import COMMANDS
from fedmpi.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def block(name: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- example:{name} -->\n```python\n(.*?)\n```", text, re.S)
    assert m, f"README lost its example:{name} block"
    return m.group(1) + "\n"


def load_as(module: str, source: str) -> types.ModuleType:
    """Execute `source` as the module `module` (as if its file were in the package)."""
    mod = types.ModuleType(module)
    mod.__file__ = f"<README {module}>"
    sys.modules[module] = mod
    exec(compile(source, mod.__file__, "exec"), mod.__dict__)
    return mod


@pytest.fixture
def examples():
    """The README's compressor and strategy, registered; unregistered afterwards."""
    names = ("fedmpi.compressors.half", "fedmpi.strategies.serverlr")
    try:
        half = load_as(names[0], block("compressor"))
        serverlr = load_as(names[1], block("strategy"))
        yield half, serverlr
    finally:
        compressors.REGISTRY.pop("half", None)
        strategies.REGISTRY.pop("serverlr", None)
        for name in names:
            sys.modules.pop(name, None)


def _run_tests(source: str, name: str) -> int:
    mod = load_as(name, source)
    tests = [f for k, f in vars(mod).items() if k.startswith("test_") and callable(f)]
    for test in tests:
        test()
    return len(tests)


def test_readme_examples_register_and_pass_their_own_tests(examples, capsys):
    half, serverlr = examples
    assert compressors.REGISTRY["half"] is half.Half
    assert strategies.REGISTRY["serverlr"] is serverlr.ServerLR
    assert _run_tests(block("compressor-test"), "readme_test_method_half") == 1
    assert _run_tests(block("strategy-test"), "readme_test_strategy_serverlr") == 1
    assert cli(["list", "compressors", "strategies"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  half +clip=65504\.0 +Micikevicius et al\. 2018", out, re.M)
    assert re.search(r"^  serverlr +lr=1\.0 +Reddi et al\. 2021", out, re.M)


def test_readme_compressor_payload_is_half_the_dense_size_and_decoded_strictly(examples):
    from fedmpi.compressors import build_compressor
    from fedmpi.compressors.base import Context
    from fedmpi.wire import WireFormatError

    comp = build_compressor({"half": {"clip": 2.0}}, field="compression.downlink")
    x = {"a": np.array([0.5, -3.0, 1e-9], np.float32), "b": np.ones((2, 2), np.float32)}
    ctx = Context(seed=1, round=0, client=-1, link="down")
    enc = comp.encode(x, ctx)
    assert enc.numel == 7 and enc.dense_bytes == 28 and enc.nnz == 6  # 1e-9 -> 0 in float16
    assert enc.reconstructed["a"].tolist() == [0.5, -2.0, 0.0]  # clipped to the parameter
    spec = [("a", (3,)), ("b", (2, 2))]
    forged = enc.payload.copy()
    forged[-2:] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    with pytest.raises(WireFormatError, match="not finite"):
        comp.decode(forged, spec, ctx.for_decode())
    with pytest.raises(WireFormatError):  # another model
        comp.decode(enc.payload, [("a", (3,)), ("b", (4,))], ctx.for_decode())
    with pytest.raises(ValueError, match="NaN or inf"):
        comp.encode({"a": np.array([np.nan], np.float32)}, ctx)


def test_zoo_section_names_real_commands_and_targets():
    text = README.read_text()
    section = text[text.index("## The compressor zoo"):text.index("## Results: the HDF5")]
    for name in re.findall(r"`fedmpi (\w+)", section):
        assert name in COMMANDS, name
    makefile = (ROOT / "Makefile").read_text()
    for target in ("zoo", "list"):
        assert f"make {target}" in section and f"\n{target}:" in makefile
    for path in ("configs/zoo/sweep.yaml", "configs/zoo/quick.yaml", "configs/zoo/base.yaml"):
        assert path in section and (ROOT / path).exists(), path
    assert "--zoo-table" in section
