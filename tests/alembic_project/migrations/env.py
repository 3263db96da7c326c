"""Alembic's generated env.py with the two lines that guard `alembic upgrade` with safeddl
(marked "safeddl"), and `SET lock_timeout` in the SQL that offline mode renders."""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import engine_from_config, pool

import safeddl  # safeddl

config = context.config

if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = None

# Programmatic callers (the tests) may pass these through Config.attributes.
POLICY = config.attributes.get("safeddl_policy")  # None: [tool.safeddl] / SAFEDDL_*
TRANSACTION_PER_MIGRATION = config.attributes.get("transaction_per_migration", True)


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=TRANSACTION_PER_MIGRATION,
    )
    with context.begin_transaction():
        context.execute("SET lock_timeout = '3s'")
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    safeddl.install(connectable, POLICY)  # safeddl

    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            transaction_per_migration=TRANSACTION_PER_MIGRATION,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
