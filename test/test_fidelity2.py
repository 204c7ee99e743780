"""Fidelity of isolated runs, second round: what a test sees of the session (its invocation, the
debugger, the faulthandler's dump) and the session-level results that plugins gather (warnings,
junit properties, snapshots, benchmarks). Each case compares ``--heavy-isolate never`` with
``always`` under every start method (see test_fidelity.py's ``parity``)."""

import xml.etree.ElementTree as ET

import pytest

from test_fidelity import METHODS, heavy, parity

# --- invocation_params ------------------------------------------------------------------------------

INVOCATION = """
def test_args(pytestconfig, record_property):
    record_property("args", repr(pytestconfig.invocation_params.args))
    record_property("dir", str(pytestconfig.invocation_params.dir))
"""


@pytest.mark.parametrize("method", METHODS)
def test_invocation_params_are_the_parents(heavy_pytester, method):
    """A spawned or template child was configured from arguments of its own (rootdir, ini file):
    a test read those, not the command line the user typed."""
    heavy_pytester.makepyfile(test_h1=heavy(INVOCATION), test_h2=heavy(INVOCATION), test_l=INVOCATION)
    parity(heavy_pytester, method, "-o", "junit_family=xunit1")
    seen = {(p.get("name"), p.get("value"))
            for p in ET.parse(heavy_pytester.path / "iso.xml").getroot().iter("property")}
    args = {value for name, value in seen if name == "args"}
    assert len(seen) == 2 and len(args) == 1 and f"'{method}'" in args.pop()


# --- config-time warnings -----------------------------------------------------------------------------

WARNS = heavy("""
import warnings

def test_warns():
    warnings.warn("from the test")
""")


def warnings_summary(result):
    text = result.stdout.str()
    return text[text.index("warnings summary"):text.index("-- Docs")]


@pytest.mark.parametrize("method", METHODS)
def test_config_warnings_counted_once(heavy_pytester, method):
    """A spawned or template child validates the ini file again when it collects its module: the
    unknown key's PytestConfigWarning came back from every child (listed and counted once per child)."""
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nunknown_key_xyz = 1\n")
    heavy_pytester.makeconftest("import warnings\nwarnings.warn('from the conftest')\n")
    heavy_pytester.makepyfile(test_h1=WARNS, test_h2=WARNS)
    base, iso = parity(heavy_pytester, method)
    assert warnings_summary(iso) == warnings_summary(base)
    assert iso.stdout.str().count("Unknown config option: unknown_key_xyz") == 1
    assert "2 passed, 4 warnings" in iso.outlines[-1]
