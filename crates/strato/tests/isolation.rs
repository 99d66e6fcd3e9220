//! Tenants' secrets and files on the host, against a real `strato serve`: the data dir and
//! every file in it are root's only (also files an older version left readable), secret
//! access keys are sealed in the database under a key kept outside it (also ones an older
//! version stored in clear), and a server given another key refuses to start rather than
//! answering every request with AuthFailure.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Cloud;

fn with_store<T>(dir: &Path, f: impl AsyncFnOnce(&strato::store::Store) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let url = strato::store::database_url(common::test_database(dir).as_deref(), dir);
        let store = strato::store::Store::open(&url).await.expect("the database");
        let out = f(&store).await;
        store.close().await;
        out
    })
}

/// Every access key's stored secret.
fn stored_secrets(dir: &Path) -> Vec<(String, String)> {
    with_store(dir, async |store| {
        let mut c = store.read().await.expect("read");
        strato::store::all_access_key_secrets(&mut c).await.expect("access keys")
    })
}

/// Whether the SQLite files of the data dir hold `needle` anywhere (free pages and the
/// write-ahead log included); false on PostgreSQL.
fn sqlite_files_contain(dir: &Path, needle: &str) -> bool {
    ["strato.db", "strato.db-wal"].iter().any(|f| {
        let bytes = std::fs::read(dir.join(f)).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

#[test]
fn secrets_are_sealed_and_files_private() {
    // A data dir as an older version left it: world-readable, with files in it.
    let dir = tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(dir.path().join("old")).unwrap();
    std::fs::write(dir.path().join("old/notes"), b"a tenant's file").unwrap();
    std::fs::set_permissions(dir.path().join("old"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path().join("old/notes"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let cloud = Cloud::start_in(dir);

    // Files made while serving: a volume's disk, a key pair, the AWS CLI config.
    let v = cloud.aws(&["ec2", "create-volume", "--size", "1", "--availability-zone", "local-1a"]);
    let vol = v["VolumeId"].as_str().expect("VolumeId").to_owned();
    let start = Instant::now();
    while cloud.aws(&["ec2", "describe-volumes", "--volume-ids", &vol])["Volumes"][0]["State"] != "available" {
        assert!(start.elapsed() < Duration::from_secs(60), "{vol} never became available");
        std::thread::sleep(Duration::from_millis(300));
    }
    cloud.aws(&["ec2", "create-key-pair", "--key-name", "k"]);
    let open = common::readable_by_others(cloud.dir.path());
    assert!(open.is_empty(), "readable by other users: {open:#?}");
    let volume_files: Vec<_> = std::fs::read_dir(cloud.dir.path().join("volumes")).unwrap().flatten().collect();
    assert!(!volume_files.is_empty(), "the volume has a file in the data dir");

    // The secret the CLI signs with is nowhere in the database in clear.
    let (key_id, secret) = cloud.admin_keys();
    let stored = stored_secrets(cloud.dir.path());
    assert!(!stored.is_empty());
    for (id, s) in &stored {
        assert!(strato::secrets::is_sealed(s) && !s.contains(&secret), "{id} is stored as {s}");
    }
    assert!(!sqlite_files_contain(cloud.dir.path(), &secret), "the secret is in the SQLite files");

    // An older version's secret in clear is sealed at the next start (and leaves no copy in
    // the SQLite files), and still signs.
    let dir = cloud.stop();
    with_store(dir.path(), async |store| {
        let mut tx = store.begin_write().await.unwrap();
        strato::store::set_access_key_secret(tx.conn(), &key_id, &secret).await.unwrap();
        tx.commit().await.unwrap();
    });
    assert!(stored_secrets(dir.path()).iter().any(|(_, s)| s == &secret));
    let cloud = Cloud::start_in(dir);
    cloud.aws(&["ec2", "describe-regions"]);
    assert!(stored_secrets(cloud.dir.path()).iter().all(|(_, s)| strato::secrets::is_sealed(s)));
    assert!(!sqlite_files_contain(cloud.dir.path(), &secret), "the secret in clear stayed in the SQLite files");

    // Another key does not open them: commands that open the control plane stop, saying why.
    let dir = cloud.stop();
    let key = dir.path().join("secrets.key");
    let ours = std::fs::read(&key).unwrap();
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let out = common::strato(dir.path()).args(["account", "create", "x"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not open"), "another key: {err}");
    std::fs::remove_file(&key).unwrap();
    let out = common::strato(dir.path()).args(["account", "create", "x"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--secrets-key-file"), "no key: {err}");
    assert!(!key.exists(), "a new key was made for a database sealed with another");
    // The operator's key file, given by path, must be private.
    let elsewhere = tempfile::tempdir().unwrap();
    let given = elsewhere.path().join("key");
    std::fs::write(&given, &ours).unwrap();
    std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out =
        common::strato(dir.path()).arg("--secrets-key-file").arg(&given).args(["account", "create", "x"]).output();
    let out = out.unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out =
        common::strato(dir.path()).arg("--secrets-key-file").arg(&given).args(["account", "create", "x"]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    common::drop_test_database(dir.path());
}
