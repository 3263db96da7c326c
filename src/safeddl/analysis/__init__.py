"""The pure core: statement facts (locks, holds, transactional) from SQL text."""

from safeddl.analysis.analyzer import (
    analyze_script,
    analyze_statement,
    catalog_from_script,
    check_version,
)
from safeddl.analysis.catalog import Catalog, Constraint, Relation
from safeddl.analysis.locktable import NEWEST, OLDEST
from safeddl.model import (
    Action,
    ConstraintType,
    RelationLock,
    Statement,
    Step,
    Volatility,
)

__all__ = [
    "NEWEST",
    "OLDEST",
    "Action",
    "Catalog",
    "Constraint",
    "ConstraintType",
    "Relation",
    "RelationLock",
    "Statement",
    "Step",
    "Volatility",
    "analyze_script",
    "analyze_statement",
    "catalog_from_script",
    "check_version",
]
