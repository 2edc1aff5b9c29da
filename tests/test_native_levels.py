"""The kernel levels of the compiled modules: what is built, what runs here, choosing one.

Nothing here assumes which CPU the machine has: only that the portable level is always
built and runnable and that the modules agree with each other.
"""

import os

import pytest

from cnnlab.backend import _build_info, _loops, _sgemm

MODULES = [_loops, _sgemm]


@pytest.mark.parametrize("module", MODULES, ids=["_loops", "_sgemm"])
def test_levels_compiled_and_runnable(module):
    built, runnable = module.levels(), module.cpu_levels()
    assert built[0] == "portable" and "portable" in runnable
    assert set(runnable) <= set(built) <= {"portable", "avx2", "avx512", "neon"}
    assert [level for level in built if level in runnable] == list(runnable)  # same order
    assert not {"avx2", "avx512"} & set(built) or "neon" not in built  # one architecture
    assert module.levels() == _loops.levels() and module.cpu_levels() == _loops.cpu_levels()


@pytest.mark.parametrize("module", MODULES, ids=["_loops", "_sgemm"])
def test_set_level_selects_and_refuses(module):
    saved = module.get_level()
    if not os.environ.get("CNNLAB_KERNELS"):
        assert saved == module.cpu_levels()[-1]  # the best runnable level, chosen at import
    try:
        for level in module.cpu_levels():
            module.set_level(level)
            assert module.get_level() == level
        for level in {"portable", "avx2", "avx512", "neon"} - set(module.cpu_levels()):
            with pytest.raises(ValueError, match=f"'{level}' cannot run.*runs: portable"):
                module.set_level(level)
        with pytest.raises(ValueError, match="does not exist"):
            module.set_level("sse9")
        with pytest.raises(TypeError):
            module.set_level(2)
        assert module.get_level() == module.cpu_levels()[-1]  # a refusal changes nothing
    finally:
        module.set_level(saved)


def test_older_entry_points_report_the_level_in_use():
    saved = _sgemm.get_level()
    try:
        _sgemm.set_level("portable")
        assert _sgemm.avx512() is False
        assert _loops.conv_relu_pool_usable() and _loops.winograd_usable()
    finally:
        _sgemm.set_level(saved)
    assert _sgemm.avx512() is (saved == "avx512")


def test_build_info_says_the_kernels_were_built():
    assert _build_info.NATIVE is True and _build_info.REASON == ""
    assert _build_info.COMPILER
