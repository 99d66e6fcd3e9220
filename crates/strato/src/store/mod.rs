//! Persistence: the control plane's state in a SQL database, either an embedded SQLite file
//! (WAL mode) under the data dir, the default, or a PostgreSQL server (`serve --database
//! postgres://...`), which several `strato serve` processes can share. Only `control` calls
//! this module; every query about a resource is scoped by its account. Schema changes are
//! numbered migrations applied at open, in order, once: written for SQLite (`migrations/`),
//! translated for PostgreSQL by `postgres_dialect` (its types).
//!
//! The queries are written once, in the SQL both understand: `$N` parameters, `ON CONFLICT`,
//! integers for booleans, RFC 3339 text for times, explicit `ORDER BY`, `CAST` of sums.
//!
//! Writes go through `Store::begin_write`: one write transaction at a time, all or nothing.
//! SQLite has one writer anyway; on PostgreSQL the transaction first takes a transaction-scoped
//! advisory lock (`WRITE_LOCK`), so writers of every process sharing the database are
//! serialised too and the control plane's read-check-write steps (quotas, address
//! allocation, ClientToken idempotency) stay exact across processes. Reads never wait.

use std::path::Path;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Row};

pub mod dhcp_options;
pub mod instances;
pub mod launch_templates;

use crate::control::model::*;
use crate::ids::*;

/// Schema migrations, applied in order; never edit one that has shipped, add a new one.
/// Written for SQLite; PostgreSQL runs them through `postgres_dialect`.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_images.sql")),
    (3, include_str!("../../migrations/0003_instances.sql")),
    (4, include_str!("../../migrations/0004_quotas.sql")),
    (5, include_str!("../../migrations/0005_usage.sql")),
    (6, include_str!("../../migrations/0006_public_addresses.sql")),
    (7, include_str!("../../migrations/0007_volumes.sql")),
    (8, include_str!("../../migrations/0008_snapshots.sql")),
    (9, include_str!("../../migrations/0009_volume_modifications.sql")),
    (10, include_str!("../../migrations/0010_root_volumes.sql")),
    (11, include_str!("../../migrations/0011_hosts.sql")),
    (12, include_str!("../../migrations/0012_recovery.sql")),
    (13, include_str!("../../migrations/0013_host_credentials.sql")),
    (14, include_str!("../../migrations/0014_vxlan.sql")),
    (15, include_str!("../../migrations/0015_instance_options.sql")),
    (16, include_str!("../../migrations/0016_launch_templates.sql")),
    (17, include_str!("../../migrations/0017_dhcp_options.sql")),
];

/// The PostgreSQL form of a migration written for SQLite: `BIGINT` for SQLite's 64-bit
/// `INTEGER`, `DOUBLE PRECISION` for `REAL`, `BIGSERIAL PRIMARY KEY` for `INTEGER PRIMARY
/// KEY AUTOINCREMENT`; every other word as written (the migrations use only SQL both accept
/// beyond these types; `tests/postgres.rs` checks the two schemas agree).
fn postgres_dialect(sql: &str) -> String {
    let sql = sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY");
    let mut out = String::with_capacity(sql.len() + 64);
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(match word.as_str() {
            "INTEGER" => "BIGINT",
            "REAL" => "DOUBLE PRECISION",
            w => w,
        });
        word.clear();
    };
    for ch in sql.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The key of the PostgreSQL advisory lock every write transaction holds ("strato" in ASCII).
const WRITE_LOCK: i64 = 0x7374_7261_746f;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Reads and writes come from two pools, so that writes (and the agent's reads) never
/// queue behind requests that only read: `pool` serves the reads of read-only API requests,
/// `priority` every write transaction and the reads of work run under `priority()` (mutating
/// API requests, the agents, the host monitor). Under 200 clients reading at once, a
/// RunInstances used to wait seconds for a connection of the one shared pool.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    priority: AnyPool,
    backend: Backend,
    write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// False: everything shares `pool` (as before the split; `strato bench reads` compares).
    split: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

tokio::task_local! {
    static PRIORITY: ();
}

/// Runs `work` with the store's priority pool for its reads (writes always use it).
pub async fn priority<F: std::future::Future>(work: F) -> F::Output {
    PRIORITY.scope((), work).await
}

fn in_priority() -> bool {
    PRIORITY.try_with(|_| ()).is_ok()
}

/// A write transaction, holding the writer lock until it ends.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

pub(crate) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn parse_ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).unwrap_or_default()
}

/// Where the control plane's database is: `--database`, or the SQLite file in the data dir.
pub fn database_url(database: Option<&str>, data_dir: &Path) -> String {
    match database {
        Some(url) if !url.is_empty() => url.to_owned(),
        _ => format!("sqlite://{}", data_dir.join("strato.db").display()),
    }
}

/// The URL with any password replaced, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A pool of `max` connections to the database at `url`.
async fn connect(url: &str, backend: Backend, max: u32) -> anyhow::Result<AnyPool> {
    match backend {
        Backend::Sqlite => {
            // The driver's own options are not reachable through `Any`: the URL creates the
            // file, and each connection is set up like `SqliteConnectOptions` would.
            let url = if url.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
            AnyPoolOptions::new()
                .max_connections(max)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            sqlx::Executor::execute(&mut *conn, pragma).await?;
                        }
                        Ok(())
                    })
                })
                .connect(&url)
                .await
        }
        Backend::Postgres => {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(std::time::Duration::from_secs(30))
                .connect(url)
                .await
        }
    }
    .with_context(|| format!("opening database {}", redacted(url)))
}

impl Store {
    /// Opens the database at `url` (`sqlite://PATH`, created if missing, or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB`, which must exist) and brings its schema up to
    /// date.
    pub async fn open(url: &str) -> anyhow::Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            anyhow::bail!("unsupported database {}: expected sqlite://PATH or postgres://...", redacted(url))
        };
        // Connections: SQLite has one writer at a time (the file lock), so its priority pool
        // is that writer and two readers; PostgreSQL's pools are larger.
        let (reads, priority) = match backend {
            Backend::Sqlite => (4, 3),
            Backend::Postgres => (8, 4),
        };
        let pool = connect(url, backend, reads).await?;
        let priority = connect(url, backend, priority).await?;
        let store = Store { pool, priority, backend, write_lock: Default::default(), split: Default::default() };
        store.set_split(true);
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Rewrites an SQLite database without its free pages, and empties its write-ahead log:
    /// after values were replaced that must not stay on disk (secrets stored in clear by an
    /// older version). PostgreSQL keeps old row versions until its own vacuum; nothing here.
    pub async fn compact(&self) -> anyhow::Result<()> {
        if self.backend == Backend::Sqlite {
            let _guard = self.write_lock.lock().await;
            let mut c = self.priority.acquire().await?;
            sqlx::Executor::execute(&mut *c, "VACUUM").await.context("VACUUM")?;
            sqlx::Executor::execute(&mut *c, "PRAGMA wal_checkpoint(TRUNCATE)").await.context("checkpoint")?;
        }
        Ok(())
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .execute(tx.conn())
            .await?;
        let done: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations").fetch_all(tx.conn()).await?;
        for (version, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            let sql = match self.backend {
                Backend::Sqlite => sql.to_string(),
                Backend::Postgres => postgres_dialect(sql),
            };
            sqlx::raw_sql(&sql).execute(tx.conn()).await.with_context(|| format!("migration {version}"))?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)").bind(version).execute(tx.conn()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Starts a write transaction, waiting for any other writer (of this process, or on
    /// PostgreSQL of any process) to end. Dropping it without `commit` rolls everything back,
    /// so an error anywhere leaves no half-done change.
    ///
    /// Cancellation-safe: the transaction is begun in a task of its own that runs to its end
    /// even when the caller's future is dropped (an aborted task, an HTTP client gone), and a
    /// transaction nobody takes is dropped there, rolled back. Begun in the caller's future,
    /// a `BEGIN IMMEDIATE` dropped after SQLite ran it but before sqlx made a `Transaction` of
    /// it (sqlx checks a custom BEGIN with one more round trip to its worker) left the
    /// connection in the pool inside a transaction, holding the file's write lock: every
    /// later write waited out `busy_timeout` and failed.
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        let guard = self.write_lock.clone().lock_owned().await;
        let pool = if self.split.load(std::sync::atomic::Ordering::Relaxed) { &self.priority } else { &self.pool };
        let (pool, backend) = (pool.clone(), self.backend);
        tokio::spawn(async move {
            let tx = match backend {
                // SQLite: the file's write lock at once, waited for (busy_timeout) while
                // another process writes, such as `strato account create` beside a running
                // server. A deferred transaction takes it at its first write instead, and
                // fails at once if the other process wrote since this one's first read.
                Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
                Backend::Postgres => {
                    let mut tx = pool.begin().await?;
                    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK).execute(&mut *tx).await?;
                    tx
                }
            };
            Ok(WriteTx { tx, _guard: guard })
        })
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("beginning a write transaction: {e}")))?
    }

    /// Every column of the schema as (table, column, declared type, not null), sorted: for
    /// checking that the two backends' migrations agree.
    pub async fn columns(&self) -> sqlx::Result<Vec<(String, String, String, bool)>> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT m.name, p.name, p.type, CASE WHEN p.\"notnull\" != 0 OR p.pk != 0 THEN 1 ELSE 0 END
                 FROM sqlite_master m JOIN pragma_table_info(m.name) p
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' ORDER BY 1, 2"
            }
            Backend::Postgres => {
                "SELECT table_name::text, column_name::text, data_type::text,
                        CAST(CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END AS BIGINT)
                 FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY 1, 2"
            }
        };
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(sql).fetch_all(&mut *self.read().await?).await?;
        Ok(rows.into_iter().map(|(t, c, ty, not_null)| (t, c, ty, not_null != 0)).collect())
    }

    /// A connection for reading: from the priority pool inside `priority()`, else from the
    /// pool of read-only requests.
    pub async fn read(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        if in_priority() && self.split.load(std::sync::atomic::Ordering::Relaxed) {
            self.priority.acquire().await
        } else {
            self.pool.acquire().await
        }
    }

    /// Whether writes and priority reads have their own pool (the default); off, everything
    /// shares one, as before (for `strato bench reads` to compare).
    pub fn set_split(&self, split: bool) {
        self.split.store(split, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.priority.close().await;
    }
}

// ---- meta

pub async fn get_meta(c: &mut AnyConnection, key: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT value FROM meta WHERE key = $1").bind(key).fetch_optional(c).await
}

pub async fn set_meta(c: &mut AnyConnection, key: &str, value: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
        .bind(key)
        .bind(value)
        .execute(c)
        .await?;
    Ok(())
}

// ---- accounts and access keys

fn account_from_row(r: &AnyRow) -> sqlx::Result<Account> {
    Ok(Account {
        id: AccountId::from_db(r.try_get("id")?),
        name: r.try_get("name")?,
        read_only: r.try_get::<i64, _>("read_only")? != 0,
        vcpu_quota: r.try_get::<i64, _>("vcpu_quota")? as u32,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?),
    })
}

pub async fn insert_account(c: &mut AnyConnection, a: &Account) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO accounts (id, name, read_only, vcpu_quota, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(a.id.as_str())
        .bind(&a.name)
        .bind(a.read_only as i64)
        .bind(a.vcpu_quota as i64)
        .bind(ts(&a.created_at))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn account_by_name(c: &mut AnyConnection, name: &str) -> sqlx::Result<Option<Account>> {
    let row = sqlx::query("SELECT * FROM accounts WHERE name = $1").bind(name).fetch_optional(c).await?;
    row.as_ref().map(account_from_row).transpose()
}

pub async fn account_by_id(c: &mut AnyConnection, id: &str) -> sqlx::Result<Option<Account>> {
    let row = sqlx::query("SELECT * FROM accounts WHERE id = $1").bind(id).fetch_optional(c).await?;
    row.as_ref().map(account_from_row).transpose()
}

pub async fn set_vcpu_quota(c: &mut AnyConnection, account: &AccountId, quota: u32) -> sqlx::Result<()> {
    sqlx::query("UPDATE accounts SET vcpu_quota = $1 WHERE id = $2")
        .bind(quota as i64)
        .bind(account.as_str())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn list_accounts(c: &mut AnyConnection) -> sqlx::Result<Vec<Account>> {
    let rows = sqlx::query("SELECT * FROM accounts ORDER BY created_at, id").fetch_all(c).await?;
    rows.iter().map(account_from_row).collect()
}

pub async fn insert_access_key(
    c: &mut AnyConnection,
    account: &AccountId,
    key_id: &str,
    secret: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO access_keys (access_key_id, account_id, secret, created_at) VALUES ($1, $2, $3, $4)")
        .bind(key_id)
        .bind(account.as_str())
        .bind(secret)
        .bind(ts(&Utc::now()))
        .execute(c)
        .await?;
    Ok(())
}

/// The secret and caller behind an access key id.
pub async fn access_key(c: &mut AnyConnection, key_id: &str) -> sqlx::Result<Option<(String, Caller)>> {
    let row = sqlx::query(
        "SELECT k.secret, k.account_id, a.read_only, a.name FROM access_keys k JOIN accounts a ON a.id = k.account_id WHERE k.access_key_id = $1",
    )
    .bind(key_id)
    .fetch_optional(c)
    .await?;
    row.map(|r| {
        Ok((
            r.try_get("secret")?,
            Caller {
                account_id: AccountId::from_db(r.try_get("account_id")?),
                read_only: r.try_get::<i64, _>("read_only")? != 0,
                admin: r.try_get::<String, _>("name")? == crate::control::ADMIN_ACCOUNT,
            },
        ))
    })
    .transpose()
}

/// Every access key's id and stored secret (sealed, or in clear from older versions).
pub async fn all_access_key_secrets(c: &mut AnyConnection) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT access_key_id, secret FROM access_keys ORDER BY created_at").fetch_all(c).await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

pub async fn set_access_key_secret(c: &mut AnyConnection, key_id: &str, secret: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE access_keys SET secret = $1 WHERE access_key_id = $2")
        .bind(secret)
        .bind(key_id)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn access_keys_of(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT access_key_id, secret FROM access_keys WHERE account_id = $1 ORDER BY created_at")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

// ---- tags

pub async fn tags_of_account(
    c: &mut AnyConnection,
    account: &AccountId,
) -> sqlx::Result<Vec<(String, String, String, String)>> {
    let rows = sqlx::query(
        "SELECT resource_id, resource_type, key, value FROM tags WHERE account_id = $1 ORDER BY resource_id, key",
    )
    .bind(account.as_str())
    .fetch_all(c)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
}

/// Tags of one kind of resource, grouped by resource id.
pub async fn tags_by_type(
    c: &mut AnyConnection,
    account: &AccountId,
    resource_type: &str,
) -> sqlx::Result<std::collections::HashMap<String, Tags>> {
    let rows = sqlx::query(
        "SELECT resource_id, key, value FROM tags WHERE account_id = $1 AND resource_type = $2 ORDER BY key",
    )
    .bind(account.as_str())
    .bind(resource_type)
    .fetch_all(c)
    .await?;
    let mut out: std::collections::HashMap<String, Tags> = Default::default();
    for r in rows {
        out.entry(r.try_get(0)?).or_default().push((r.try_get(1)?, r.try_get(2)?));
    }
    Ok(out)
}

pub async fn put_tag(
    c: &mut AnyConnection,
    account: &AccountId,
    resource_id: &str,
    resource_type: &str,
    key: &str,
    value: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO tags (resource_id, key, account_id, resource_type, value) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT(resource_id, key) DO UPDATE SET value = excluded.value",
    )
    .bind(resource_id)
    .bind(key)
    .bind(account.as_str())
    .bind(resource_type)
    .bind(value)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn tag_count(c: &mut AnyConnection, resource_id: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM tags WHERE resource_id = $1").bind(resource_id).fetch_one(c).await
}

/// Deletes a tag; with `value`, only if the tag has that value.
pub async fn delete_tag(
    c: &mut AnyConnection,
    account: &AccountId,
    resource_id: &str,
    key: &str,
    value: Option<&str>,
) -> sqlx::Result<()> {
    let q = match value {
        Some(v) => {
            sqlx::query("DELETE FROM tags WHERE account_id = $1 AND resource_id = $2 AND key = $3 AND value = $4")
                .bind(account.as_str())
                .bind(resource_id)
                .bind(key)
                .bind(v)
        }
        None => sqlx::query("DELETE FROM tags WHERE account_id = $1 AND resource_id = $2 AND key = $3")
            .bind(account.as_str())
            .bind(resource_id)
            .bind(key),
    };
    q.execute(c).await?;
    Ok(())
}

pub async fn delete_all_tags(c: &mut AnyConnection, resource_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM tags WHERE resource_id = $1").bind(resource_id).execute(c).await?;
    Ok(())
}

// ---- key pairs

pub async fn insert_key_pair(c: &mut AnyConnection, account: &AccountId, k: &KeyPair) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO key_pairs (id, account_id, name, key_type, fingerprint, public_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(k.id.as_str())
        .bind(account.as_str())
        .bind(&k.name)
        .bind(&k.key_type)
        .bind(&k.fingerprint)
        .bind(&k.public_key)
        .bind(ts(&k.created_at))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn key_pairs(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<KeyPair>> {
    let rows = sqlx::query("SELECT * FROM key_pairs WHERE account_id = $1 ORDER BY name")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(KeyPair {
                id: KeyPairId::from_db(r.try_get("id")?),
                name: r.try_get("name")?,
                key_type: r.try_get("key_type")?,
                fingerprint: r.try_get("fingerprint")?,
                public_key: r.try_get("public_key")?,
                created_at: parse_ts(&r.try_get::<String, _>("created_at")?),
                tags: Vec::new(),
            })
        })
        .collect()
}

pub async fn delete_key_pair(c: &mut AnyConnection, account: &AccountId, id: &KeyPairId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM key_pairs WHERE account_id = $1 AND id = $2")
        .bind(account.as_str())
        .bind(id.as_str())
        .execute(c)
        .await?;
    Ok(())
}

// ---- VPCs and subnets

pub async fn insert_vpc(c: &mut AnyConnection, v: &Vpc) -> sqlx::Result<()> {
    // The VNI: one more than any VPC has (under the write lock, so never shared).
    sqlx::query("INSERT INTO vpcs (id, account_id, cidr, is_default, instance_tenancy, enable_dns_support, enable_dns_hostnames, created_at, vni)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, (SELECT COALESCE(MAX(vni), 0) + 1 FROM vpcs))")
        .bind(v.id.as_str())
        .bind(v.owner.as_str())
        .bind(&v.cidr)
        .bind(v.is_default as i64)
        .bind(&v.instance_tenancy)
        .bind(v.enable_dns_support as i64)
        .bind(v.enable_dns_hostnames as i64)
        .bind(ts(&Utc::now()))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn vpcs(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<Vpc>> {
    let rows = sqlx::query("SELECT * FROM vpcs WHERE account_id = $1 ORDER BY created_at, id")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Vpc {
                id: VpcId::from_db(r.try_get("id")?),
                owner: AccountId::from_db(r.try_get("account_id")?),
                cidr: r.try_get("cidr")?,
                is_default: r.try_get::<i64, _>("is_default")? != 0,
                instance_tenancy: r.try_get("instance_tenancy")?,
                enable_dns_support: r.try_get::<i64, _>("enable_dns_support")? != 0,
                enable_dns_hostnames: r.try_get::<i64, _>("enable_dns_hostnames")? != 0,
                dhcp_options_id: r.try_get("dhcp_options_id")?,
                tags: Vec::new(),
            })
        })
        .collect()
}

pub async fn delete_vpc(c: &mut AnyConnection, account: &AccountId, id: &VpcId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM vpcs WHERE account_id = $1 AND id = $2")
        .bind(account.as_str())
        .bind(id.as_str())
        .execute(c)
        .await?;
    Ok(())
}

pub async fn insert_subnet(c: &mut AnyConnection, s: &Subnet) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO subnets (id, account_id, vpc_id, cidr, availability_zone, is_default, map_public_ip, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
        .bind(s.id.as_str())
        .bind(s.owner.as_str())
        .bind(s.vpc_id.as_str())
        .bind(&s.cidr)
        .bind(&s.availability_zone)
        .bind(s.is_default as i64)
        .bind(s.map_public_ip as i64)
        .bind(ts(&Utc::now()))
        .execute(c)
        .await?;
    Ok(())
}

pub async fn subnets(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<Subnet>> {
    let rows = sqlx::query("SELECT * FROM subnets WHERE account_id = $1 ORDER BY created_at, id")
        .bind(account.as_str())
        .fetch_all(c)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Subnet {
                id: SubnetId::from_db(r.try_get("id")?),
                owner: AccountId::from_db(r.try_get("account_id")?),
                vpc_id: VpcId::from_db(r.try_get("vpc_id")?),
                cidr: r.try_get("cidr")?,
                availability_zone: r.try_get("availability_zone")?,
                availability_zone_id: String::new(),
                is_default: r.try_get::<i64, _>("is_default")? != 0,
                map_public_ip: r.try_get::<i64, _>("map_public_ip")? != 0,
                tags: Vec::new(),
            })
        })
        .collect()
}

pub async fn delete_subnet(c: &mut AnyConnection, account: &AccountId, id: &SubnetId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM subnets WHERE account_id = $1 AND id = $2")
        .bind(account.as_str())
        .bind(id.as_str())
        .execute(c)
        .await?;
    Ok(())
}

// ---- security groups

pub async fn insert_security_group(c: &mut AnyConnection, g: &SecurityGroup) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO security_groups (id, account_id, vpc_id, name, description, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(g.id.as_str())
    .bind(g.owner.as_str())
    .bind(g.vpc_id.as_str())
    .bind(&g.name)
    .bind(&g.description)
    .bind(ts(&Utc::now()))
    .execute(c)
    .await?;
    Ok(())
}

fn rule_from_row(r: &AnyRow) -> sqlx::Result<SgRule> {
    let peer = if let Some(g) = r.try_get::<Option<String>, _>("ref_group_id")? {
        Peer::Group {
            group_id: SecurityGroupId::from_db(g),
            owner: AccountId::from_db(r.try_get::<Option<String>, _>("ref_account_id")?.unwrap_or_default()),
        }
    } else if let Some(v6) = r.try_get::<Option<String>, _>("cidr_ipv6")? {
        Peer::Ipv6(v6)
    } else {
        Peer::Ipv4(r.try_get::<Option<String>, _>("cidr_ipv4")?.unwrap_or_default())
    };
    Ok(SgRule {
        id: SecurityGroupRuleId::from_db(r.try_get("id")?),
        group_id: SecurityGroupId::from_db(r.try_get("group_id")?),
        is_egress: r.try_get::<i64, _>("is_egress")? != 0,
        protocol: r.try_get("protocol")?,
        from_port: r.try_get("from_port")?,
        to_port: r.try_get("to_port")?,
        peer,
        description: r.try_get("description")?,
    })
}

/// The security groups of an account, with their rules (tags are attached by the caller).
pub async fn security_groups(c: &mut AnyConnection, account: &AccountId) -> sqlx::Result<Vec<SecurityGroup>> {
    let rows = sqlx::query("SELECT * FROM security_groups WHERE account_id = $1 ORDER BY created_at, id")
        .bind(account.as_str())
        .fetch_all(&mut *c)
        .await?;
    let rules = sqlx::query("SELECT * FROM security_group_rules WHERE account_id = $1 ORDER BY position")
        .bind(account.as_str())
        .fetch_all(&mut *c)
        .await?;
    let mut by_group: std::collections::HashMap<String, Vec<SgRule>> = Default::default();
    for r in &rules {
        let rule = rule_from_row(r)?;
        by_group.entry(rule.group_id.as_str().to_owned()).or_default().push(rule);
    }
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("id")?;
            Ok(SecurityGroup {
                rules: by_group.remove(&id).unwrap_or_default(),
                id: SecurityGroupId::from_db(id),
                owner: AccountId::from_db(r.try_get("account_id")?),
                vpc_id: VpcId::from_db(r.try_get("vpc_id")?),
                name: r.try_get("name")?,
                description: r.try_get("description")?,
                tags: Vec::new(),
            })
        })
        .collect()
}

/// A security group of any account, by id (group references may cross accounts).
pub async fn security_group_owner(
    c: &mut AnyConnection,
    id: &SecurityGroupId,
) -> sqlx::Result<Option<(AccountId, VpcId)>> {
    let row = sqlx::query("SELECT account_id, vpc_id FROM security_groups WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(c)
        .await?;
    row.map(|r| Ok((AccountId::from_db(r.try_get(0)?), VpcId::from_db(r.try_get(1)?)))).transpose()
}

pub async fn insert_rule(c: &mut AnyConnection, account: &AccountId, rule: &SgRule) -> sqlx::Result<()> {
    let (v4, v6, g, gacc) = match &rule.peer {
        Peer::Ipv4(c) => (Some(c.as_str()), None, None, None),
        Peer::Ipv6(c) => (None, Some(c.as_str()), None, None),
        Peer::Group { group_id, owner } => (None, None, Some(group_id.as_str()), Some(owner.as_str())),
    };
    sqlx::query(
        "INSERT INTO security_group_rules (id, group_id, account_id, is_egress, protocol, from_port, to_port, cidr_ipv4, cidr_ipv6, ref_group_id, ref_account_id, description, position)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, (SELECT COALESCE(MAX(position), 0) + 1 FROM security_group_rules))",
    )
    .bind(rule.id.as_str())
    .bind(rule.group_id.as_str())
    .bind(account.as_str())
    .bind(rule.is_egress as i64)
    .bind(&rule.protocol)
    .bind(rule.from_port)
    .bind(rule.to_port)
    .bind(v4)
    .bind(v6)
    .bind(g)
    .bind(gacc)
    .bind(&rule.description)
    .execute(c)
    .await?;
    Ok(())
}

pub async fn delete_rule(c: &mut AnyConnection, id: &SecurityGroupRuleId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM security_group_rules WHERE id = $1").bind(id.as_str()).execute(c).await?;
    Ok(())
}

/// Groups (other than `id` itself) whose rules name `id` as their peer.
pub async fn groups_referencing(c: &mut AnyConnection, id: &SecurityGroupId) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT group_id FROM security_group_rules WHERE ref_group_id = $1 AND group_id != $2")
        .bind(id.as_str())
        .bind(id.as_str())
        .fetch_all(c)
        .await
}

pub async fn delete_security_group(
    c: &mut AnyConnection,
    account: &AccountId,
    id: &SecurityGroupId,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM security_group_rules WHERE group_id = $1").bind(id.as_str()).execute(&mut *c).await?;
    sqlx::query("DELETE FROM security_groups WHERE account_id = $1 AND id = $2")
        .bind(account.as_str())
        .bind(id.as_str())
        .execute(c)
        .await?;
    Ok(())
}

/// Whether `account` owns a resource with this id, for the kinds that have tables so far.
/// `None` when the kind has no table yet (it cannot exist).
pub async fn owns(
    c: &mut AnyConnection,
    account: &AccountId,
    resource_type: &str,
    id: &str,
) -> sqlx::Result<Option<bool>> {
    // The table name comes from this fixed list, never from the request.
    let table = match resource_type {
        "key-pair" => "key_pairs",
        "vpc" => "vpcs",
        "subnet" => "subnets",
        "security-group" => "security_groups",
        "security-group-rule" => "security_group_rules",
        "instance" => "instances",
        "elastic-ip" => "addresses",
        "volume" => "volumes",
        "snapshot" => "snapshots",
        "internet-gateway" => "internet_gateways",
        "launch-template" => "launch_templates",
        "dhcp-options" => "dhcp_options",
        "image" => {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM images WHERE id = $1 AND owner_id = $2")
                .bind(id)
                .bind(account.as_str())
                .fetch_one(c)
                .await?;
            return Ok(Some(n > 0));
        }
        _ => return Ok(None),
    };
    let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE id = $1 AND account_id = $2"))
        .bind(id)
        .bind(account.as_str())
        .fetch_one(c)
        .await?;
    Ok(Some(n > 0))
}

// ---- images

fn image_from_row(r: &AnyRow) -> sqlx::Result<Image> {
    Ok(Image {
        id: ImageId::from_db(r.try_get("id")?),
        owner: AccountId::from_db(r.try_get("owner_id")?),
        owner_alias: r.try_get("owner_alias")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        architecture: r.try_get("architecture")?,
        root_device_name: r.try_get("root_device_name")?,
        root_snapshot_id: SnapshotId::from_db(r.try_get("root_snapshot_id")?),
        root_size_gb: r.try_get("root_size_gb")?,
        disk_path: r.try_get("disk_path")?,
        disk_format: r.try_get("disk_format")?,
        kernel_path: r.try_get("kernel_path")?,
        initrd_path: r.try_get("initrd_path")?,
        cmdline: r.try_get("cmdline")?,
        public: r.try_get::<i64, _>("public")? != 0,
        state: r.try_get("state")?,
        source_image_id: r.try_get("source_image_id")?,
        build_key: r.try_get("build_key")?,
        client_token: r.try_get("client_token")?,
        created_at: parse_ts(&r.try_get::<String, _>("created_at")?),
        launch_permissions: Vec::new(),
        tags: Vec::new(),
    })
}

pub async fn insert_image(c: &mut AnyConnection, i: &Image) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO images (id, owner_id, owner_alias, name, description, architecture, root_device_name, root_snapshot_id,
         root_size_gb, disk_path, disk_format, kernel_path, initrd_path, cmdline, public, state, source_image_id, build_key, client_token, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
    )
    .bind(i.id.as_str())
    .bind(i.owner.as_str())
    .bind(&i.owner_alias)
    .bind(&i.name)
    .bind(&i.description)
    .bind(&i.architecture)
    .bind(&i.root_device_name)
    .bind(i.root_snapshot_id.as_str())
    .bind(i.root_size_gb)
    .bind(&i.disk_path)
    .bind(&i.disk_format)
    .bind(&i.kernel_path)
    .bind(&i.initrd_path)
    .bind(&i.cmdline)
    .bind(i.public as i64)
    .bind(&i.state)
    .bind(&i.source_image_id)
    .bind(&i.build_key)
    .bind(&i.client_token)
    .bind(ts(&i.created_at))
    .execute(c)
    .await?;
    Ok(())
}

/// Every image with its launch permissions (visibility is decided by the caller).
pub async fn images(c: &mut AnyConnection) -> sqlx::Result<Vec<Image>> {
    let rows = sqlx::query("SELECT * FROM images ORDER BY id").fetch_all(&mut *c).await?;
    let perms = sqlx::query("SELECT image_id, account_id FROM image_launch_permissions ORDER BY account_id")
        .fetch_all(c)
        .await?;
    let mut by_image: std::collections::HashMap<String, Vec<AccountId>> = Default::default();
    for p in perms {
        by_image.entry(p.try_get(0)?).or_default().push(AccountId::from_db(p.try_get(1)?));
    }
    rows.iter()
        .map(|r| {
            let mut i = image_from_row(r)?;
            i.launch_permissions = by_image.remove(i.id.as_str()).unwrap_or_default();
            Ok(i)
        })
        .collect()
}

pub async fn set_image_public(c: &mut AnyConnection, id: &ImageId, public: bool) -> sqlx::Result<()> {
    sqlx::query("UPDATE images SET public = $1 WHERE id = $2").bind(public as i64).bind(id.as_str()).execute(c).await?;
    Ok(())
}

pub async fn set_image_description(c: &mut AnyConnection, id: &ImageId, d: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE images SET description = $1 WHERE id = $2").bind(d).bind(id.as_str()).execute(c).await?;
    Ok(())
}

pub async fn add_launch_permission(c: &mut AnyConnection, id: &ImageId, account: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO image_launch_permissions (image_id, account_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(id.as_str())
        .bind(account)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn remove_launch_permission(c: &mut AnyConnection, id: &ImageId, account: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM image_launch_permissions WHERE image_id = $1 AND account_id = $2")
        .bind(id.as_str())
        .bind(account)
        .execute(c)
        .await?;
    Ok(())
}

pub async fn delete_image(c: &mut AnyConnection, id: &ImageId) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM image_launch_permissions WHERE image_id = $1").bind(id.as_str()).execute(&mut *c).await?;
    sqlx::query("DELETE FROM images WHERE id = $1").bind(id.as_str()).execute(c).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), super::MIGRATIONS.len(), "{files:?}");
        for (i, (version, _)) in super::MIGRATIONS.iter().enumerate() {
            assert_eq!(*version, i as i64 + 1);
            assert!(files[i].starts_with(&format!("{:04}_", version)), "{}", files[i]);
        }
    }

    #[test]
    fn migrations_translate_to_postgres_types() {
        assert_eq!(
            super::postgres_dialect("CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL,\n p REAL, integers TEXT); -- INTEGER"),
            "CREATE TABLE t (id BIGSERIAL PRIMARY KEY, n BIGINT NOT NULL,\n p DOUBLE PRECISION, integers TEXT); -- BIGINT"
        );
    }

    /// A write whose future is dropped at any point (a task aborted, an HTTP client gone)
    /// leaves no transaction open behind it: the next write goes through. A `BEGIN IMMEDIATE`
    /// cancelled after the database ran it but before sqlx made a `Transaction` of it once
    /// left its connection in the pool holding the file's write lock, and every later write
    /// failed ("database is locked", an InternalError).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_write_leaves_no_lock_behind() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = super::Store::open(&url).await.unwrap();
        for n in 0..400u64 {
            // Dropped after a few microseconds: somewhere inside `begin_write`, or after it.
            let _ = tokio::time::timeout(std::time::Duration::from_micros(n % 40 * 10), async {
                let mut tx = store.begin_write().await?;
                super::set_meta(tx.conn(), "k", &n.to_string()).await?;
                tx.commit().await
            })
            .await;
            let mut tx = store.begin_write().await.unwrap_or_else(|e| panic!("write after cancel {n}: {e}"));
            super::set_meta(tx.conn(), "last", &n.to_string()).await.unwrap();
            tx.commit().await.unwrap_or_else(|e| panic!("commit after cancel {n}: {e}"));
        }
        let mut c = store.read().await.unwrap();
        assert_eq!(super::get_meta(&mut c, "last").await.unwrap().as_deref(), Some("399"));
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            super::redacted("postgres://strato:s3cret@127.0.0.1:5432/db"),
            "postgres://strato:***@127.0.0.1:5432/db"
        );
        assert_eq!(super::redacted("postgres://strato@127.0.0.1/db"), "postgres://strato@127.0.0.1/db");
        assert_eq!(super::redacted("sqlite:///var/lib/strato/strato.db"), "sqlite:///var/lib/strato/strato.db");
    }
}
