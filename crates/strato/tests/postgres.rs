//! The control plane on PostgreSQL (needs `STRATO_TEST_POSTGRES`, which `scripts/test` sets
//! after starting Debian's PostgreSQL on loopback). The behaviour tests run on it too: the
//! second pass of `scripts/test` runs every test that needs no VM with
//! `STRATO_TEST_BACKEND=postgres`.

mod common;

/// The migrations of the two backends make the same tables, columns, types and constraints.
#[test]
fn both_backends_have_the_same_schema() {
    let url = common::new_postgres_database();
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (sqlite, postgres) = rt.block_on(async {
        let sqlite = strato::store::Store::open(&strato::store::database_url(None, dir.path())).await.expect("sqlite");
        let postgres = strato::store::Store::open(&url).await.expect("postgres");
        let s = sqlite.columns().await.expect("sqlite columns");
        let p = postgres.columns().await.expect("postgres columns");
        postgres.close().await;
        (s, p)
    });
    common::drop_postgres_database(&url);
    let kind = |t: &str| match t.to_ascii_uppercase().as_str() {
        "BIGINT" | "INTEGER" => "integer",
        "DOUBLE PRECISION" | "REAL" => "real",
        "TEXT" => "text",
        other => panic!("a column type the two backends do not share: {other}"),
    };
    let norm = |cols: Vec<(String, String, String, bool)>| -> Vec<(String, String, &'static str, bool)> {
        cols.into_iter().map(|(t, c, ty, nn)| (t, c, kind(&ty), nn)).collect()
    };
    let (s, p) = (norm(sqlite), norm(postgres));
    assert!(s.len() > 100, "the schema has its tables: {s:?}");
    for (a, b) in s.iter().zip(&p) {
        assert_eq!(a, b, "SQLite and PostgreSQL schemas differ");
    }
    assert_eq!(s.len(), p.len(), "SQLite and PostgreSQL have the same number of columns");
}

/// The monitor's lease: one holder at a time, renewed by its holder, taken by another once
/// it expired; the same on both backends.
#[test]
fn a_lease_has_one_holder_at_a_time() {
    let url = common::new_postgres_database();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for database in [None, Some(url.as_str())] {
        let dir = tempfile::tempdir().expect("temp dir");
        rt.block_on(async {
            let control = strato::server::open_control(dir.path(), database, "local-1", None).await.expect("control");
            let ttl = std::time::Duration::from_millis(300);
            assert!(control.take_lease("test", "a", ttl).await.unwrap(), "free: a takes it");
            assert!(!control.take_lease("test", "b", ttl).await.unwrap(), "a holds it");
            assert!(control.take_lease("test", "a", ttl).await.unwrap(), "a renews it");
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            assert!(control.take_lease("test", "b", ttl).await.unwrap(), "expired: b takes it");
            assert!(!control.take_lease("test", "a", ttl).await.unwrap(), "b holds it");
            control.store().close().await;
        });
    }
    common::drop_postgres_database(&url);
}
