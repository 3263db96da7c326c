"""The runtime policy: how long to wait for locks, and what to do about each finding.

One immutable :class:`Policy`. Values are checked when it is built; a bad value raises
:class:`safeddl.ConfigError` naming the key, the value and where it came from.
:meth:`Policy.from_sources` reads ``[tool.safeddl]`` in ``pyproject.toml`` and the
``SAFEDDL_*`` environment variables (later sources win: defaults, pyproject, env,
keyword overrides).

``pyproject.toml``::

    [tool.safeddl]
    lock_timeout = "3s"                 # every DDL statement waits at most this long
    statement_timeout = { default = "inherit", concurrently = "off" }
    refuse = ["drop-index"]             # shorthand lists: allow / warn / rewrite / refuse
    actions = { truncate = "warn" }     # or one rule at a time
    unparsed_ddl = "refuse"             # statements safeddl cannot read
    unparsed_dml = "allow"
    guard_dml_lock_timeout = false      # also bound lock waits of INSERT/UPDATE/DELETE/SELECT
    pg_version = 15                     # default: read from the connection
    small_table_rows = 10000            # strong locks on smaller tables are not refused
    pool_mode = "auto"                  # "session": the pooler pins a server session
    lock_order = ["accounts", "ledger"] # canonical lock order: these first, then by name
    long_lock_threshold = "1s"          # report SHARE+ locks held longer (0: off)
    preflight = { enabled = true, min_age = "5s", wait = "0s" }

Environment (and SQLAlchemy URL query keys, lower case): ``SAFEDDL_LOCK_TIMEOUT=3s``,
``SAFEDDL_STATEMENT_TIMEOUT=default=30s,concurrently=off``,
``SAFEDDL_REFUSE=rule,rule``, ``SAFEDDL_ALLOW=...``, ``SAFEDDL_WARN=...``,
``SAFEDDL_REWRITE=...``, ``SAFEDDL_ACTIONS=truncate=warn,...``, ``SAFEDDL_UNPARSED_DDL``,
``SAFEDDL_UNPARSED_DML``, ``SAFEDDL_GUARD_DML_LOCK_TIMEOUT``, ``SAFEDDL_PG_VERSION``,
``SAFEDDL_SMALL_TABLE_ROWS``, ``SAFEDDL_POOL_MODE``, ``SAFEDDL_LOCK_ORDER=accounts,ledger``,
``SAFEDDL_LONG_LOCK_THRESHOLD``, ``SAFEDDL_PREFLIGHT``, ``SAFEDDL_PREFLIGHT_MIN_AGE``,
``SAFEDDL_PREFLIGHT_WAIT``.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from safeddl.runtime.errors import ConfigError

if TYPE_CHECKING:
    from safeddl.analysis import Statement

logger = logging.getLogger("safeddl")

K = TypeVar("K")
V = TypeVar("V")

Duration = timedelta | str | int | float
"""A duration: a timedelta, milliseconds as a number, or text such as ``"3s"``,
``"500ms"``, ``"2min"`` (PostgreSQL's units: us, ms, s, min, h, d; no unit means ms)."""

ENV_PREFIX = "SAFEDDL_"
INHERIT = "inherit"  # statement_timeout: leave the session's value alone
NO_LIMIT = timedelta(0)  # statement_timeout: no limit (SET statement_timeout = 0)
CONCURRENTLY = "concurrently"  # statement_timeout group: CONCURRENTLY builds, drops, detaches
DEFAULT = "default"  # statement_timeout group: every other statement

# Error rules whose lock is brief: the bounded lock wait is the whole remedy, so they
# warn by default instead of refusing.
_BOUNDED_BY_LOCK_TIMEOUT = frozenset(
    {"drop-index", "detach-partition", "statements-after-access-exclusive",
     "missing-lock-timeout"}
)
UNPARSED_RULE = "unparsed-statement"
# Valid statements whose locks the text does not show (CALL, EXECUTE of a statement
# prepared elsewhere...): unknown like an unread statement, so they follow
# ``unparsed_ddl`` unless an action is set for the rule itself.
_FOLLOWS_UNPARSED = frozenset({"opaque-statement"})
# Error rules whose safe form safeddl can run instead, with the same end state (see
# safeddl.runtime.rewrite); where it cannot be exact the statement is refused. Not `truncate`:
# DELETE differs from TRUNCATE (triggers, identity, cascades), so that is opt-in, nor
# `drop-index`, which warns (the bounded lock wait is its remedy) and rewrites on request.
_EXACT_REWRITES = frozenset(
    {"create-index", "reindex", "add-foreign-key", "add-check", "set-not-null", "add-unique"}
)


class RuleAction(str, enum.Enum):
    """What the guard does about a finding, from the mildest to the strictest."""

    ALLOW = "allow"  # send the statement, say nothing
    WARN = "warn"  # send it, log a warning on the "safeddl" logger
    REWRITE = "rewrite"  # send the safe equivalent instead (refused when none applies)
    REFUSE = "refuse"  # do not send it: raise UnsafeStatement

    @property
    def strictness(self) -> int:
        return _STRICTNESS[self]

    @classmethod
    def parse(cls, value: object, key: str) -> RuleAction:
        if isinstance(value, RuleAction):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        raise ConfigError(_bad(key, value, "expected one of allow, warn, rewrite, refuse"))


_STRICTNESS = {RuleAction.ALLOW: 0, RuleAction.WARN: 1, RuleAction.REWRITE: 2,
               RuleAction.REFUSE: 3}


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """An immutable, hashable mapping (so that a Policy can be a cache key)."""

    __slots__ = ("_hash", "_items")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._items: dict[K, V] = dict(items)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._items.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


@dataclass(frozen=True)
class Preflight:
    """Before a statement that needs a lock conflicting with readers, look for sessions
    that have held a conflicting lock on the table (or run a transaction) for longer
    than ``min_age``; wait up to ``wait`` for them to finish, or fail at once
    (``PreflightBlocked``) rather than join the lock queue behind them. Off by default."""

    enabled: bool = False
    min_age: Duration = timedelta(seconds=1)
    wait: Duration = timedelta(0)
    poll_interval: Duration = timedelta(milliseconds=100)

    def __post_init__(self) -> None:
        object.__setattr__(self, "enabled", parse_bool(self.enabled, "preflight.enabled"))
        object.__setattr__(self, "min_age", parse_duration(self.min_age, "preflight.min_age",
                                                           allow_zero=True))
        object.__setattr__(self, "wait", parse_duration(self.wait, "preflight.wait",
                                                        allow_zero=True))
        object.__setattr__(self, "poll_interval",
                           parse_duration(self.poll_interval, "preflight.poll_interval"))

    @property
    def min_age_seconds(self) -> float:
        return as_timedelta(self.min_age).total_seconds()

    @property
    def wait_seconds(self) -> float:
        return as_timedelta(self.wait).total_seconds()

    @property
    def poll_seconds(self) -> float:
        return as_timedelta(self.poll_interval).total_seconds()


@dataclass(frozen=True)
class Policy:
    """What the runtime guard does. Immutable and hashable; build variants with
    :func:`dataclasses.replace` or :meth:`with_actions`."""

    lock_timeout: Duration = timedelta(seconds=3)
    # Action values ("create-index", "validate-constraint", ...) or the groups
    # "concurrently" and "default" -> a duration, "off" (no limit) or "inherit"; merged
    # over the defaults (concurrently and validate-constraint: off; default: inherit).
    statement_timeout: Mapping[str, Duration | None] = field(
        default_factory=lambda: default_statement_timeouts())
    # rule id -> action; merged over the defaults (errors refuse, warnings warn).
    actions: Mapping[str, RuleAction | str] = field(default_factory=dict)
    unparsed_ddl: RuleAction | str = RuleAction.REFUSE
    unparsed_dml: RuleAction | str = RuleAction.ALLOW
    guard_dml_lock_timeout: bool = False
    pg_version: int | None = None
    small_table_rows: int = 10_000
    # How the connection reaches the server, for the statements that cannot run in a
    # transaction block (CREATE INDEX CONCURRENTLY, ...): "auto" (a direct connection is
    # pinned to one server session; behind a pooler assume transaction pooling),
    # "session" (a session-pooling pooler: pinned) or "transaction" (never pinned). Only
    # on a pinned connection are they bounded with a session setting (then restored).
    pool_mode: str = "auto"
    preflight: Preflight = field(default_factory=Preflight)
    # Canonical lock order: these tables first, in this order, then the others by
    # schema-qualified name (rules lock-order and row-lock-order).
    lock_order: tuple[str, ...] | list[str] | str = ()
    # A transaction that held SHARE or stronger on a table longer than this is reported
    # when it ends (safeddl.runtime.ledger.on_long_held_lock); 0 switches the report off.
    long_lock_threshold: Duration = timedelta(seconds=1)
    lock_timeout_ms: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name, normalize in _NORMALIZERS:
            try:
                object.__setattr__(self, name, normalize(getattr(self, name)))
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(_summary(problems), problems)
        object.__setattr__(self, "lock_timeout_ms", milliseconds(as_timedelta(self.lock_timeout)))

    # -- reading ------------------------------------------------------------------
    def action_for(self, rule_id: str) -> RuleAction:
        action = self.actions.get(rule_id)
        if action is None and rule_id in _FOLLOWS_UNPARSED:
            return self.unparsed_action(False)
        return action if isinstance(action, RuleAction) else RuleAction.WARN

    def unparsed_action(self, looks_like_dml: bool) -> RuleAction:
        action = self.unparsed_dml if looks_like_dml else self.unparsed_ddl
        return action if isinstance(action, RuleAction) else RuleAction.REFUSE

    def statement_timeout_ms(self, statement: Statement) -> int | None:
        """The ``statement_timeout`` to set for this statement (0: no limit), or None to
        leave the session's own value."""
        for key in _timeout_keys(statement):
            if key in self.statement_timeout:
                value = self.statement_timeout[key]
                return None if value is None else milliseconds(as_timedelta(value))
        return None

    def with_actions(self, actions: Mapping[str, RuleAction | str]) -> Policy:
        """A copy with these rule actions changed (the others kept)."""
        return dataclasses.replace(self, actions={**self.actions, **actions})

    # -- building -------------------------------------------------------------------
    @classmethod
    def from_sources(cls, pyproject_path: str | Path | None = None,
                     env: Mapping[str, str] | None = None, **overrides: Any) -> Policy:
        """Defaults < ``[tool.safeddl]`` of pyproject.toml < ``SAFEDDL_*`` env < overrides.

        ``pyproject_path`` None: the nearest ``pyproject.toml`` from the working
        directory up. ``env`` None: ``os.environ``.
        """
        settings = Settings()
        path = Path(pyproject_path) if pyproject_path is not None else find_pyproject()
        if path is not None:
            settings.add_table(read_tool_table(path), f"{path} [tool.safeddl]")
        settings.add_strings(environment_settings(os.environ if env is None else env),
                             "environment", prefix=ENV_PREFIX)
        settings.add_overrides(overrides)
        return settings.build()

    @classmethod
    def from_strings(cls, values: Mapping[str, str], source: str,
                     base: Policy | None = None) -> Policy:
        """From text settings such as URL query keys (``lock_timeout=3s``,
        ``refuse=rule,rule``), over ``base``."""
        settings = Settings(base)
        settings.add_strings(values, source)
        return settings.build()


# --------------------------------------------------------------------------- values


def default_statement_timeouts() -> dict[str, Duration | None]:
    """Concurrent builds and VALIDATE may take long: no limit; the rest: the session's."""
    return {CONCURRENTLY: NO_LIMIT, "validate-constraint": NO_LIMIT, DEFAULT: None}


PG_TIMEOUT_MAX_MS = 2_147_483_647
"""The largest ``lock_timeout`` / ``statement_timeout`` PostgreSQL accepts (INT_MAX
milliseconds, about 24.8 days); a larger value fails every statement that sets it."""


def parse_duration(value: object, key: str, *, allow_zero: bool = False,
                   maximum_ms: int | None = None) -> timedelta:
    """``"3s"``, ``"500ms"``, ``1500`` (ms), ``timedelta(...)`` -> timedelta; at most
    ``maximum_ms`` milliseconds (rounded up as :func:`milliseconds` does) when given."""
    delta = _to_timedelta(value, key)
    if delta < timedelta(0) or (delta == timedelta(0) and not allow_zero):
        need = "zero or more" if allow_zero else "a positive duration"
        raise ConfigError(_bad(key, value, f"must be {need}, such as '3s' or '500ms'"))
    if maximum_ms is not None and milliseconds(delta) > maximum_ms:
        raise ConfigError(_bad(key, value, f"is {milliseconds(delta):,} ms; PostgreSQL "
                               f"accepts at most {maximum_ms:,} ms (about "
                               f"{maximum_ms // 86_400_000} days) for it"))
    return delta


def parse_timeout(value: object, key: str, *, allow_zero: bool = False) -> timedelta:
    """A duration safeddl sends to the server as ``lock_timeout`` or
    ``statement_timeout``: within PostgreSQL's range (:data:`PG_TIMEOUT_MAX_MS`)."""
    return parse_duration(value, key, allow_zero=allow_zero, maximum_ms=PG_TIMEOUT_MAX_MS)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|sec|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "sec": 1000.0, "min": 60_000.0,
            "h": 3_600_000.0, "d": 86_400_000.0}


def _to_timedelta(value: object, key: str) -> timedelta:
    try:
        return _read_timedelta(value, key)
    except (OverflowError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(_bad(key, value, "is too large for a duration")) from None


def _read_timedelta(value: object, key: str) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ConfigError(_bad(key, value, "expected a duration such as '3s' or '500ms'"))
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(_bad(key, value, "expected a finite duration"))
        return timedelta(milliseconds=value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            unit = (match.group(2) or "ms").lower()
            return timedelta(milliseconds=float(match.group(1)) * _UNIT_MS[unit])
        if value.strip().startswith("-"):
            raise ConfigError(_bad(key, value, "must be a positive duration"))
    raise ConfigError(_bad(key, value, "expected a duration such as '3s', '500ms' or 1500 (ms)"))


def parse_statement_timeout(value: object, key: str) -> timedelta | None:
    """A duration, ``"off"``/``"none"``/0 (no limit), or ``"inherit"``/None."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == INHERIT:
        return None
    if isinstance(value, str) and value.strip().lower() in ("off", "none", "unlimited"):
        return NO_LIMIT
    return parse_timeout(value, key, allow_zero=True)


def parse_bool(value: object, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off", ""):
            return False
    raise ConfigError(_bad(key, value, "expected true or false"))


def parse_int(value: object, key: str, *, minimum: int) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d[\d_]*\s*", value):
        try:
            number = int(value.strip().replace("_", ""))
        except ValueError:  # more digits than Python converts
            raise ConfigError(_bad(key, value, "is too large a number")) from None
    if number is None or number < minimum:
        raise ConfigError(_bad(key, value, f"expected a whole number >= {minimum}"))
    return number


def parse_pg_version(value: object, key: str = "pg_version") -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    from safeddl.analysis.locktable import NEWEST, OLDEST

    number = parse_int(value, key, minimum=0)
    if not OLDEST <= number <= NEWEST:
        raise ConfigError(_bad(key, value, f"safeddl knows PostgreSQL {OLDEST} to {NEWEST}"))
    return number


def parse_lock_order(value: object, key: str = "lock_order") -> tuple[str, ...]:
    """Table names, as a list or comma separated text: ``"accounts, app.ledger"``."""
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value]
    else:
        raise ConfigError(_bad(key, value, "expected a list of table names"))
    from safeddl.sql.names import qualified_name, split_name

    seen: dict[str, str] = {}
    for name in names:
        parts = split_name(name) if name else []
        if not parts or len(parts) > 2 or any(not part for part, _quoted in parts):
            raise ConfigError(_bad(key, value, f"{name!r} is not a table name "
                                   "(table or schema.table)"))
        qualified = qualified_name(name)
        if qualified in seen:
            raise ConfigError(_bad(key, value, f"{name!r} is listed twice "
                                   f"(also as {seen[qualified]!r})"))
        seen[qualified] = name
    return tuple(names)


def as_timedelta(value: Duration) -> timedelta:
    """A normalised Duration field (always a timedelta after __post_init__)."""
    return value if isinstance(value, timedelta) else _to_timedelta(value, "duration")


def milliseconds(delta: timedelta) -> int:
    """Whole milliseconds, rounded up (1 ms at least for a positive duration)."""
    return math.ceil(delta / timedelta(milliseconds=1))


def _bad(key: str, value: object, why: str) -> str:
    return f"{key} = {value!r}: {why}"


def _summary(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"safeddl: invalid setting {problems[0]}"
    return "safeddl: invalid settings:\n" + "\n".join(f"  {p}" for p in problems)


# --------------------------------------------------------------------------- normalizing


def known_rules() -> dict[str, RuleAction]:
    """The default action of every rule: errors whose safe form is an exact rewrite
    rewrite (in autocommit the safe sequence runs instead; inside a transaction block
    the statement is refused with that sequence spelled out); other errors refuse
    (except the brief-lock ones, which the bounded lock wait makes safe: they warn);
    warnings warn."""
    from safeddl.rules import RULES, Severity

    defaults: dict[str, RuleAction] = {}
    for rule in RULES:
        if rule.id in _EXACT_REWRITES:
            defaults[rule.id] = RuleAction.REWRITE
        elif rule.severity is Severity.ERROR and rule.id not in _BOUNDED_BY_LOCK_TIMEOUT:
            defaults[rule.id] = RuleAction.REFUSE
        else:
            defaults[rule.id] = RuleAction.WARN
    return defaults


def _normalize_actions(value: object) -> FrozenMap[str, RuleAction | str]:
    if not isinstance(value, Mapping):
        raise ConfigError(_bad("actions", value, "expected a table of rule id = action"))
    defaults = known_rules()
    if UNPARSED_RULE in value:
        raise ConfigError(_bad(f"actions.{UNPARSED_RULE}", value[UNPARSED_RULE],
                               "set unparsed_ddl / unparsed_dml instead"))
    unknown = [f"actions.{k} = {value[k]!r}: unknown rule id (`safeddl rules` lists them)"
               for k in sorted(value, key=str) if k not in defaults]
    if unknown:
        raise ConfigError(_summary(unknown), unknown)
    merged: dict[str, RuleAction | str] = {
        rule_id: action for rule_id, action in defaults.items()
        if rule_id != UNPARSED_RULE and rule_id not in _FOLLOWS_UNPARSED}
    for rule_id, action in value.items():
        merged[rule_id] = RuleAction.parse(action, f"actions.{rule_id}")
    return FrozenMap(merged)


def _normalize_statement_timeout(value: object) -> FrozenMap[str, Duration | None]:
    if not isinstance(value, Mapping):
        value = {DEFAULT: value}
    valid = _timeout_groups()
    out: dict[str, Duration | None] = default_statement_timeouts()
    for key, item in value.items():
        if key not in valid:
            raise ConfigError(_bad(f"statement_timeout.{key}", item,
                                   "unknown kind: use 'default', 'concurrently' or a "
                                   "statement kind such as 'create-index'"))
        out[key] = parse_statement_timeout(item, f"statement_timeout.{key}")
    return FrozenMap(out)


def _timeout_groups() -> frozenset[str]:
    from safeddl.analysis import Action

    return frozenset({DEFAULT, CONCURRENTLY} | {action.value for action in Action})


def _timeout_keys(statement: Statement) -> list[str]:
    keys = [CONCURRENTLY] if any(step.concurrently for step in statement.steps) else []
    keys.extend(step.action.value for step in statement.steps)
    keys.append(DEFAULT)
    return keys


_NORMALIZERS: tuple[tuple[str, Any], ...] = (
    ("lock_timeout", lambda v: parse_timeout(v, "lock_timeout")),
    ("statement_timeout", _normalize_statement_timeout),
    ("actions", _normalize_actions),
    ("unparsed_ddl", lambda v: RuleAction.parse(v, "unparsed_ddl")),
    ("unparsed_dml", lambda v: RuleAction.parse(v, "unparsed_dml")),
    ("guard_dml_lock_timeout", lambda v: parse_bool(v, "guard_dml_lock_timeout")),
    ("pg_version", parse_pg_version),
    ("small_table_rows", lambda v: parse_int(v, "small_table_rows", minimum=0)),
    ("pool_mode", lambda v: _parse_pool_mode(v, "pool_mode")),
    ("lock_order", lambda v: parse_lock_order(v, "lock_order")),
    ("long_lock_threshold", lambda v: parse_duration(v, "long_lock_threshold", allow_zero=True)),
    ("preflight", lambda v: _normalize_preflight(v, "preflight")),
)


POOL_MODES = ("auto", "session", "transaction")


def _parse_pool_mode(value: object, key: str) -> str:
    text = str(value).strip().lower()
    if text not in POOL_MODES:
        raise ConfigError(_bad(key, value, "expected one of " + ", ".join(POOL_MODES)))
    return text


def _normalize_preflight(value: object, key: str) -> Preflight:
    if isinstance(value, Preflight):
        return value
    if isinstance(value, (bool, str)):
        return Preflight(enabled=parse_bool(value, key))
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(Preflight)})
        if unknown:
            raise ConfigError(_bad(key, dict(value), f"unknown key(s) {', '.join(unknown)}"))
        return Preflight(**value)
    raise ConfigError(_bad(key, value, "expected true/false or a table"))


# --------------------------------------------------------------------------- sources


class Settings:
    """Policy keyword arguments gathered from several sources, later ones winning;
    every problem is reported at once, with its source."""

    _SIMPLE = ("lock_timeout", "unparsed_ddl", "unparsed_dml", "guard_dml_lock_timeout",
               "pg_version", "small_table_rows", "lock_order", "long_lock_threshold",
               "pool_mode")
    _LISTS = ("allow", "warn", "rewrite", "refuse")

    def __init__(self, base: Policy | None = None) -> None:
        self.values: dict[str, Any] = {}
        self.actions: dict[str, Any] = {}
        self.timeouts: dict[str, Any] = {}
        self.preflight: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.problems: list[str] = []
        if base is not None:
            self._start_from(base)

    def _start_from(self, base: Policy) -> None:
        self.values = {name: getattr(base, name) for name in self._SIMPLE}
        self.actions = dict(base.actions)
        self.timeouts = dict(base.statement_timeout)
        self.preflight = {f.name: getattr(base.preflight, f.name)
                          for f in dataclasses.fields(Preflight)}

    # -- sources ------------------------------------------------------------------
    def add_table(self, table: Mapping[str, Any], source: str) -> None:
        """``[tool.safeddl]``: typed TOML values."""
        for key, value in table.items():
            self._add(key, value, source, from_text=False)

    def add_strings(self, values: Mapping[str, str], source: str, prefix: str = "") -> None:
        """Environment variables / URL keys: text values, comma separated lists."""
        for raw_key, value in values.items():
            key = raw_key[len(prefix):].lower() if prefix else raw_key.lower()
            label = f"{source} {raw_key}" if prefix else source
            self._add(key, value, label, from_text=True)

    def add_overrides(self, overrides: Mapping[str, Any]) -> None:
        for key, value in overrides.items():
            self._add(key, value, "keyword argument", from_text=False)

    # -- one key ------------------------------------------------------------------
    def _add(self, key: str, value: Any, source: str, *, from_text: bool) -> None:
        try:
            self._dispatch(key, value, source, from_text)
        except ConfigError as exc:
            self.problems.extend(f"{p} (from {source})" for p in exc.problems)

    def _dispatch(self, key: str, value: Any, source: str, from_text: bool) -> None:
        if key in self._SIMPLE:
            self._set(self.values, key, value, source)
        elif key in self._LISTS:
            for rule_id in _as_list(value, key):
                self._set(self.actions, rule_id, key, source)
        elif key == "actions":
            self._merge(self.actions, _as_pairs(value, key, from_text), source)
        elif key == "statement_timeout":
            pairs = _as_pairs(value, key, from_text, bare_key=DEFAULT)
            self._merge(self.timeouts, pairs, source)
        elif key == "preflight":
            self._add_preflight(value, source)
        elif key.startswith("preflight_"):
            self._set(self.preflight, key[len("preflight_"):], value, source)
        else:
            raise ConfigError(_bad(key, value, "unknown setting"))

    def _add_preflight(self, value: Any, source: str) -> None:
        if isinstance(value, Mapping):
            self._merge(self.preflight, value, source)
        else:
            self._set(self.preflight, "enabled", value, source)

    def _set(self, target: dict[str, Any], key: str, value: Any, source: str) -> None:
        target[key] = value
        self.origin[key] = source

    def _merge(self, target: dict[str, Any], pairs: Mapping[str, Any], source: str) -> None:
        for key, value in pairs.items():
            self._set(target, key, value, source)

    # -- result -------------------------------------------------------------------
    def build(self) -> Policy:
        kwargs = dict(self.values)
        if self.actions:
            kwargs["actions"] = self.actions
        if self.timeouts:
            kwargs["statement_timeout"] = {**default_statement_timeouts(), **self.timeouts}
        if self.preflight:
            kwargs["preflight"] = dict(self.preflight)
        if not self.problems:
            try:
                return Policy(**kwargs)
            except ConfigError as exc:
                self.problems.extend(self._with_origin(exc.problems))
        raise ConfigError(_summary(self.problems), self.problems)

    def _with_origin(self, problems: Iterable[str]) -> list[str]:
        out = []
        for problem in problems:
            key = problem.split(" = ", 1)[0].split(".")[-1]
            origin = self.origin.get(key)
            out.append(f"{problem} (from {origin})" if origin else problem)
        return out


def _as_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    raise ConfigError(_bad(key, value, "expected a list of rule ids"))


def _as_pairs(value: Any, key: str, from_text: bool, bare_key: str | None = None,
              ) -> Mapping[str, Any]:
    if isinstance(value, Mapping):
        return value
    if from_text and isinstance(value, str):
        if "=" not in value and bare_key is not None:
            return {bare_key: value}
        pairs = {}
        for part in value.split(","):
            name, sep, item = part.partition("=")
            if not sep or not name.strip():
                raise ConfigError(_bad(key, value, "expected name=value,name=value"))
            pairs[name.strip()] = item.strip()
        return pairs
    if bare_key is not None and not isinstance(value, (list, tuple)):
        return {bare_key: value}
    raise ConfigError(_bad(key, value, "expected a table of name = value"))


def environment_settings(env: Mapping[str, str]) -> dict[str, str]:
    """The ``SAFEDDL_*`` variables that are policy settings (others, such as
    ``SAFEDDL_TEST_DSN``, belong to other parts of safeddl)."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in _POLICY_KEYS}
    return {key: value for key, value in env.items() if key in known}


_POLICY_KEYS = (*Settings._SIMPLE, *Settings._LISTS, "actions", "statement_timeout",
                "preflight", "preflight_enabled", "preflight_min_age", "preflight_wait",
                "preflight_poll_interval")


def find_pyproject(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` from ``start`` (the working directory) upwards."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def read_tool_table(path: Path) -> Mapping[str, Any]:
    """``[tool.safeddl]`` of a pyproject.toml, or the top level of a policy TOML file
    that has no ``[tool.safeddl]``."""
    try:
        data = _load_toml(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"safeddl: cannot read {path}: {exc}") from exc
    tool = data.get("tool")
    if isinstance(tool, Mapping) and "safeddl" in tool:
        table = tool["safeddl"]
        if not isinstance(table, Mapping):
            raise ConfigError(f"safeddl: [tool.safeddl] in {path} is not a table")
        return table
    if path.name == "pyproject.toml":
        return {}
    return data


def _load_toml(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


@lru_cache(maxsize=1)
def default_policy() -> Policy:
    """``Policy.from_sources()`` (pyproject.toml and SAFEDDL_* variables), read once."""
    return Policy.from_sources()


__all__ = [
    "CONCURRENTLY",
    "DEFAULT",
    "INHERIT",
    "NO_LIMIT",
    "PG_TIMEOUT_MAX_MS",
    "Duration",
    "FrozenMap",
    "Policy",
    "Preflight",
    "RuleAction",
    "default_policy",
    "find_pyproject",
    "known_rules",
    "parse_duration",
    "parse_timeout",
    "read_tool_table",
]
