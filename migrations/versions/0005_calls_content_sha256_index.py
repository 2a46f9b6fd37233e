"""Index calls by content_sha256: the inbox scan's "analysed already?" lookup.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

The scan names a new file's call ``sha256-<content hash>`` and skipped a file only when a
call of that id existed. A file replaced between its scan and its analysis is stored under
the old content's id, with the content the worker read in ``content_sha256``; a copy of that
content under another name was then analysed a second time (a review). The scan now also
looks the content up in ``content_sha256`` (``worker.store.content_holders``), a chunk of
new files per statement, which this index serves.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_calls_content_sha256", "calls", ["content_sha256"])


def downgrade() -> None:
    op.drop_index("ix_calls_content_sha256", table_name="calls")
