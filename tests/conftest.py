"""Shared test configuration.

The safeddl fixtures (safeddl_server, safeddl_db, ...) come from the package's
``pytest11`` entry point (``safeddl.testing.pytest_plugin``), active once safeddl is installed.
"""

pytest_plugins = ["pytester"]
