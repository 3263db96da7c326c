"""add status, index customer_id (unsafe: the index build blocks writes)

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("status", sa.Text, nullable=True))
    op.create_index("orders_customer_id_idx", "orders", ["customer_id"])


def downgrade() -> None:
    op.drop_index("orders_customer_id_idx", table_name="orders")
    op.drop_column("orders", "status")
