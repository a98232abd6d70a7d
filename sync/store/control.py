"""Control tables, as SQLAlchemy Core metadata. Alembic migrations in migrations/ create them.

The mirror tables themselves are dynamic (one per environment and Dataverse table) and are not
part of this metadata; `_dv_deletions` is, because its shape is fixed and documented.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

# One row per configured environment, with what WhoAmI told us about the application user.
environments = Table(
    "dv_environments",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("tenant_id", String(255), nullable=False),
    Column("url", Text, nullable=False),
    Column("organization_id", String(36)),
    Column("application_user_id", String(36)),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Per mirrored table: where its sync stands. Written in the same transaction as each page.
sync_state = Table(
    "dv_sync_state",
    metadata,
    Column("environment", String(63), primary_key=True),
    Column("table_name", String(128), primary_key=True),
    # new | backfill | resync | delta | watermark | reconcile (sync.store.checkpoints.Phase);
    # a table is parked when last_error is newer than last_success, whatever its phase.
    Column("phase", String(16), nullable=False, server_default="new"),
    Column("next_link", Text),
    Column("delta_link", Text),
    Column("watermark", String(40)),
    Column("signpost", String(40)),
    Column("resync_started_at", DateTime(timezone=True)),
    Column("schema_hash", String(64)),
    Column("row_count", BigInteger, nullable=False, server_default="0"),
    Column("rows_upserted", BigInteger, nullable=False, server_default="0"),
    Column("rows_deleted", BigInteger, nullable=False, server_default="0"),
    Column("pages", BigInteger, nullable=False, server_default="0"),
    Column("total_estimate", BigInteger),
    Column("last_success", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("last_error_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("parked_until", DateTime(timezone=True)),
    Column("last_reconcile", DateTime(timezone=True)),
    Column("state_version", Integer, nullable=False, server_default="1"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The fencing token of the environment's lease under which the last checkpoint was written
    # (store.leases); NULL when it was written without a lease.
    Column("lease_token", BigInteger),
    # A key-only scan under way (store.key_scans): JSON of its next link, start and key sample,
    # written with each key page; NULL when none is.
    Column("key_scan", Text),
)

# The mirror's column catalogue: what each mirror column came from, and when it went away.
mirror_columns = Table(
    "dv_mirror_columns",
    metadata,
    Column("environment", String(63), primary_key=True),
    Column("table_name", String(128), primary_key=True),
    Column("column_name", String(255), primary_key=True),
    Column("attribute_type", String(64), nullable=False),
    Column("sql_type", String(32), nullable=False),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("removed_at", DateTime(timezone=True)),
    Column("type_changed_at", DateTime(timezone=True)),
    # The attribute's MetadataId: a column deleted and created again gets a new one.
    Column("attribute_id", String(36)),
    # Its display name and description at the source (for dbt-sources), refreshed with the schema.
    Column("display_name", Text),
    Column("description", Text),
)

# One row per command or daemon cycle per table.
run_history = Table(
    "dv_run_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(63), nullable=False),
    Column("table_name", String(128), nullable=False),
    Column("command", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("status", String(16), nullable=False, server_default="running"),
    Column("rows_upserted", BigInteger, nullable=False, server_default="0"),
    Column("rows_deleted", BigInteger, nullable=False, server_default="0"),
    Column("pages", Integer, nullable=False, server_default="0"),
    Column("requests", Integer, nullable=False, server_default="0"),
    Column("throttled", Integer, nullable=False, server_default="0"),
    # Seconds of Retry-After pause that this run's 429s started (the governor's count).
    Column("paused_seconds", Float, nullable=False, server_default="0"),
    Column("error", Text),
    Index(None, "environment", "table_name", "started_at"),
)

# The key ranges of a table's parallel backfill (sync.mirror.ranged): each range is its own
# nextLink chain with its own checkpoint, written in the same transaction as each of its pages.
# The rows exist only while a ranged full pass runs; its last commit deletes them.
key_ranges = Table(
    "dv_key_ranges",
    metadata,
    Column("environment", String(63), primary_key=True),
    Column("table_name", String(128), primary_key=True),
    Column("range_no", Integer, primary_key=True, autoincrement=False),
    Column("lower_key", String(36)),  # exclusive; NULL: from the first key
    Column("upper_key", String(36)),  # inclusive; NULL: to the last key
    Column("next_link", Text),
    Column("done", Boolean, nullable=False, server_default=false()),
    Column("rows", BigInteger, nullable=False, server_default="0"),
    Column("pages", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# One row per environment: which `dvmirror run` process owns it (store.leases). Several daemons
# share a PostgreSQL store this way; `holder` '' means free. `token` (the fencing token) grows by
# one at every takeover, and every write transaction of the environment checks it.
leases = Table(
    "dv_leases",
    metadata,
    Column("resource", String(255), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("token", BigInteger, nullable=False, server_default="0"),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# The live daemons (members) sharing the store, seen at their last heartbeat: the fair share of
# environments is computed from how many there are.
daemons = Table(
    "dv_daemons",
    metadata,
    Column("holder", String(255), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)

# Power Platform request entitlement: requests used per tenant in the current 24 h window.
request_budget = Table(
    "dv_request_budget",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("used", BigInteger, nullable=False, server_default="0"),
)

# Every deletion the mirror applied (a live row removed or soft-deleted), for downstream jobs.
# Contract: environment, table, id, observed_at, _dv_commit_seq (the commit that applied it);
# reason: NULL (the sync) or "verify" (a ghost row that `verify --repair` removed).
deletions = Table(
    "_dv_deletions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(63), nullable=False),
    Column("table", String(128), nullable=False),
    Column("id", String(36), nullable=False),
    Column("observed_at", DateTime(timezone=True), nullable=False),
    Column("_dv_commit_seq", BigInteger),  # NULL: logged before migration 0007
    Column("reason", String(16)),
    Index(None, "environment", "table", "observed_at"),
    Index(None, "environment", "_dv_commit_seq"),
)

# The change feed (store.commits): one row per page transaction that really changed a mirror of
# the environment. `seq` counts per environment and is given in commit order; every mirror row
# and `_dv_deletions` row that commit wrote carries it as `_dv_commit_seq`.
commits = Table(
    "dv_commits",
    metadata,
    Column("environment", String(63), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("table_name", String(128), nullable=False),
    Column("committed_at", DateTime(timezone=True), nullable=False),
    Column("upserts", BigInteger, nullable=False, server_default="0"),
    Column("deletes", BigInteger, nullable=False, server_default="0"),
)

# One row per table and `dvmirror verify` run (sync.verify): the deepest level reached
# (1 estimate, 2 exact range counts, 3 key/version diff), outcome "match" | "mismatch" |
# "repaired" | "approximate" | "stopped" | "failed", what level 3 found and what was repaired.
verify_runs = Table(
    "dv_verify_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(63), nullable=False),
    Column("table_name", String(128), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("level", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("source_estimate", BigInteger),
    Column("mirror_rows", BigInteger),
    Column("ranges", Integer, nullable=False, server_default="0"),
    Column("missing", BigInteger, nullable=False, server_default="0"),
    Column("ghost", BigInteger, nullable=False, server_default="0"),
    Column("stale", BigInteger, nullable=False, server_default="0"),
    Column("repaired", BigInteger, nullable=False, server_default="0"),
    Column("requests", Integer, nullable=False, server_default="0"),
    Column("detail", Text),
    Index(None, "environment", "table_name", "started_at"),
)

# Resync on demand (store.requests): `dvmirror resync` and the console write a row, the daemon
# holding the environment's lease runs a full pass of the table(s) and writes its progress back.
# table_name NULL: every table of the environment. state: requested | running | done | failed.
# `open_key` is environment/table while the request is open (requested or running) and NULL
# once it ended: its unique index keeps one open request per environment and table.
resync_requests = Table(
    "dv_resync_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("environment", String(63), nullable=False),
    Column("table_name", String(128)),
    Column("requested_by", String(255), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False, server_default="requested"),
    Column("rows_done", BigInteger, nullable=False, server_default="0"),
    Column("rows_expected", BigInteger),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("error", Text),
    Column("handled_by", String(255)),
    Column("open_key", String(200)),
    Index(None, "open_key", unique=True),
    Index(None, "environment", "requested_at"),
)

# Who did what, for the console and the CLI: sign-ins, refusals, resync requests. Never a token.
# outcome: "ok", or "refused: <reason>".
audit = Table(
    "dv_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("tenant_id", String(255)),
    Column("user_oid", String(36)),
    Column("preferred_username", String(255)),
    Column("action", String(32), nullable=False),
    Column("environment", String(63)),
    Column("target", String(255)),
    Column("outcome", String(255), nullable=False),
    Index(None, "at"),
    Index(None, "environment", "at"),
)

# Alerts (runtime.alerts): per alert, environment, table ('' for the whole environment) and
# event, whether the condition holds and when a message about it was last sent, so that a
# restart or a takeover by another daemon sends nothing twice.
alert_state = Table(
    "dv_alert_state",
    metadata,
    Column("alert", String(63), primary_key=True),
    Column("environment", String(63), primary_key=True),
    Column("table_name", String(128), primary_key=True),
    Column("event", String(32), primary_key=True),
    Column("active", Boolean, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
    Column("last_sent_at", DateTime(timezone=True)),
    # A one-off event's identity (schema_type_change: when the type changed).
    Column("marker", String(64), nullable=False, server_default=""),
    Column("detail", Text, nullable=False, server_default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The last delivery of each alert: when, what, and how it went ("ok" or why not). Never the URL.
alert_deliveries = Table(
    "dv_alert_deliveries",
    metadata,
    Column("alert", String(63), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("event", String(32), nullable=False),
    Column("environment", String(63), nullable=False),
    Column("table_name", String(128), nullable=False),
    Column("outcome", String(255), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_ok_at", DateTime(timezone=True)),
    Column("failures", BigInteger, nullable=False, server_default="0"),
)

# Per environment, metadata table (store.metadata_tables) and Dataverse table: the hash of its
# rows there, so a refresh rewrites only what changed at the source.
metadata_hashes = Table(
    "dv_metadata_hashes",
    metadata,
    Column("environment", String(63), primary_key=True),
    Column("metadata_table", String(63), primary_key=True),
    Column("entityname", String(128), primary_key=True),
    Column("source_hash", String(64), nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("refreshed_at", DateTime(timezone=True), nullable=False),
)
