"""The deliberate public API: what `import keystile` and `keystile.resource` offer."""

from __future__ import annotations

import keystile
import keystile.resource


def test_top_level_all_is_short_and_sorted():
    """keystile.__all__ lists exactly the documented names, sorted, all importable."""
    assert keystile.__all__ == ["Clock", "FixedClock", "OAuthError", "SystemClock", "__version__"]
    for name in keystile.__all__:
        assert hasattr(keystile, name)


def test_resource_sdk_does_not_import_the_server():
    """The SDK stays small: importing it pulls in neither the AS nor its stores."""
    import subprocess
    import sys

    code = (
        "import sys, keystile.resource, keystile.resource.middleware;"
        "bad = [m for m in sys.modules if m.startswith(('keystile.server', 'keystile.store',"
        " 'starlette', 'asyncpg', 'uvicorn'))];"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    assert sorted(keystile.resource.__all__) == keystile.resource.__all__
