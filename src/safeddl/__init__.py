"""safeddl: a lock-aware safety layer for PostgreSQL statements.

The pure core lives in :mod:`safeddl.analysis` (what each statement locks) and
:mod:`safeddl.rules` (what is unsafe and the safe alternative). Importing this
package is cheap: nothing heavy is imported until it is used.
"""

from __future__ import annotations

__version__ = "0.1.0"
