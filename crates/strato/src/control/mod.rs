//! The control plane: accounts and every resource, their validation and their state. It is
//! the only writer of the database (`store`). The API calls one function here per action,
//! with the `Caller` it authenticated; every function reads and changes only that caller's
//! resources, and answers another account's id exactly as an id that does not exist.
//!
//! Control functions return `ApiError` directly: their failures are EC2 errors by nature
//! (`InvalidGroup.NotFound`, `DependencyViolation`, ...), and a database failure becomes an
//! `InternalError` whose cause is logged.

pub mod addresses;
pub mod billing;
pub mod cidr;
pub mod dhcp;
pub mod filter;
pub mod gateways;
pub mod hosts;
pub mod images;
pub mod info;
pub mod instance_state;
pub mod instances;
pub mod keypairs;
pub mod launch_templates;
pub mod model;
pub mod network;
pub mod security_groups;
pub mod snapshots;
pub mod tags;
pub mod volumes;

use std::collections::HashMap;
use std::sync::RwLock;

use anyhow::Context;
use chrono::Utc;
use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::api::error::{ApiError, ApiResult};
use crate::catalog::{Catalogue, Region};
use crate::ids::AccountId;
use crate::secrets::{self, Sealer};
use crate::store::{self, Store};
use model::{Account, Caller};

/// The name of the account `strato serve` creates on first start.
pub const ADMIN_ACCOUNT: &str = "admin";

pub struct Control {
    store: Store,
    pub region: Region,
    pub catalogue: Catalogue,
    /// This host's own files: VM run directories, launch snapshots, networks.
    pub data_dir: std::path::PathBuf,
    /// Files every host of the cloud (of a zone, at least) reaches: `images/`, `volumes/`
    /// and `snapshots/`. The data dir unless `--storage-dir` names a shared path.
    pub storage_dir: std::path::PathBuf,
    /// Access keys already seen: they are never changed once issued, so a hit is final.
    keys: RwLock<HashMap<String, (String, Caller)>>,
    /// Wakes the in-process agent when desired state changes (it also polls).
    pub agent_wake: tokio::sync::Notify,
    /// Where public addresses come from (a loopback block on a single host).
    pub public_pool: cidr::Ipv4Cidr,
    /// Guest memory the in-process agent's host promises, relative to its RAM.
    pub memory_overcommit: f64,
    /// A host whose last heartbeat is older than this is down.
    pub host_timeout: std::time::Duration,
    /// Seals the secrets kept in the database (`crate::secrets`).
    pub sealer: Sealer,
}

/// An access key pair, as handed to a user once.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub account_id: AccountId,
    pub account_name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Control {
    /// Opens the control plane on a store. The region is fixed at first start: a database made
    /// for one region refuses to serve another.
    pub async fn new(
        store: Store,
        region: Region,
        catalogue: Catalogue,
        data_dir: std::path::PathBuf,
        sealer: Sealer,
    ) -> anyhow::Result<Control> {
        let mut tx = store.begin_write().await?;
        match store::get_meta(tx.conn(), "region").await? {
            Some(r) if r != region.name => {
                anyhow::bail!("this data dir holds region {r}; start with --region {r} or use another data dir")
            }
            Some(_) => {}
            None => store::set_meta(tx.conn(), "region", &region.name).await?,
        }
        let sealed_now = seal_stored_secrets(tx.conn(), &sealer).await?;
        tx.commit().await?;
        if sealed_now > 0 {
            // The secrets in clear are gone from the rows, not yet from the file.
            store.compact().await?;
        }
        Ok(Control {
            store,
            region,
            catalogue,
            storage_dir: data_dir.clone(),
            data_dir,
            keys: RwLock::new(HashMap::new()),
            agent_wake: tokio::sync::Notify::new(),
            public_pool: cidr::Ipv4Cidr::parse(crate::net::DEFAULT_PUBLIC_POOL, true)
                .ok_or_else(|| anyhow::anyhow!("the default public pool does not parse"))?,
            memory_overcommit: instances::MEMORY_OVERCOMMIT,
            host_timeout: hosts::HOST_TIMEOUT,
            sealer,
        })
    }

    /// Where each instance's VM run files (pid, QMP socket, console) live on this host:
    /// `DATA_DIR/instances/<id>/`.
    pub fn instances_dir(&self) -> std::path::PathBuf {
        self.data_dir.join("instances")
    }

    /// Image files: `STORAGE_DIR/images/<ami>/`.
    pub fn images_dir(&self) -> std::path::PathBuf {
        self.storage_dir.join("images")
    }

    /// Volume files: `STORAGE_DIR/volumes/<vol>.qcow2`.
    pub fn volumes_dir(&self) -> std::path::PathBuf {
        self.storage_dir.join("volumes")
    }

    /// An instance's serial console log, `STORAGE_DIR/consoles/<id>.log`, where every API
    /// server reads it (its VM's run directory links `console.log` there).
    pub fn console_file(&self, instance_id: &str) -> std::path::PathBuf {
        self.storage_dir.join("consoles").join(format!("{instance_id}.log"))
    }

    /// Snapshot files: `STORAGE_DIR/snapshots/<snap>.qcow2`.
    pub fn snapshots_dir(&self) -> std::path::PathBuf {
        self.storage_dir.join("snapshots")
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The secret and account of an access key id, for SigV4.
    pub async fn lookup_access_key(&self, key_id: &str) -> ApiResult<Option<(String, Caller)>> {
        if let Ok(cache) = self.keys.read() {
            if let Some(hit) = cache.get(key_id) {
                return Ok(Some(hit.clone()));
            }
        }
        let mut c = self.store.read().await?;
        let found = match store::access_key(&mut c, key_id).await? {
            Some((sealed, caller)) => Some((self.open_secret(key_id, &sealed)?, caller)),
            None => None,
        };
        if let (Some(hit), Ok(mut cache)) = (&found, self.keys.write()) {
            cache.insert(key_id.to_owned(), hit.clone());
        }
        Ok(found)
    }

    /// Creates an account with its access key, default VPC, subnets and security group.
    pub async fn create_account(&self, name: &str, read_only: bool) -> ApiResult<Credentials> {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ApiError::invalid_value("Account names are 1 to 64 letters, digits, '-' or '_'"));
        }
        let mut tx = self.store.begin_write().await?;
        if store::account_by_name(tx.conn(), name).await?.is_some() {
            return Err(ApiError::duplicate(
                "AccountAlreadyExists",
                format!("An account named '{name}' already exists"),
            ));
        }
        let account = Account {
            id: AccountId::generate(),
            name: name.to_owned(),
            read_only,
            vcpu_quota: instances::DEFAULT_VCPU_QUOTA,
            created_at: Utc::now(),
        };
        store::insert_account(tx.conn(), &account).await?;
        let access_key_id = new_access_key_id();
        let secret: String = rand::thread_rng().sample_iter(&Alphanumeric).take(40).map(char::from).collect();
        let sealed = self
            .sealer
            .seal(&secrets::access_key_context(&access_key_id), secret.as_bytes())
            .map_err(ApiError::Internal)?;
        store::insert_access_key(tx.conn(), &account.id, &access_key_id, &sealed).await?;
        network::create_default_vpc(tx.conn(), &self.region, &account.id).await?;
        tx.commit().await?;
        tracing::info!(account_id = %account.id, name, "account created");
        Ok(Credentials {
            account_id: account.id,
            account_name: name.to_owned(),
            access_key_id,
            secret_access_key: secret,
        })
    }

    /// The credentials of an existing account (its first access key), by name.
    pub async fn credentials(&self, name: &str) -> ApiResult<Option<Credentials>> {
        let mut c = self.store.read().await?;
        let Some(account) = store::account_by_name(&mut c, name).await? else { return Ok(None) };
        let keys = store::access_keys_of(&mut c, &account.id).await?;
        let Some((access_key_id, sealed)) = keys.into_iter().next() else { return Ok(None) };
        Ok(Some(Credentials {
            account_id: account.id.clone(),
            account_name: account.name.clone(),
            secret_access_key: self.open_secret(&access_key_id, &sealed)?,
            access_key_id,
        }))
    }

    /// A stored secret access key, opened.
    fn open_secret(&self, key_id: &str, sealed: &str) -> ApiResult<String> {
        self.sealer.open_str(&secrets::access_key_context(key_id), sealed).map_err(|e| {
            tracing::error!(key_id, error = %e, "a stored secret does not open");
            ApiError::Internal(e)
        })
    }

    /// Sets an account's vCPU quota (by account name).
    pub async fn set_vcpu_quota(&self, name: &str, quota: u32) -> ApiResult<()> {
        let mut tx = self.store.begin_write().await?;
        let account = store::account_by_name(tx.conn(), name)
            .await?
            .ok_or_else(|| ApiError::not_found("InvalidAccount.NotFound", format!("No account named '{name}'")))?;
        store::set_vcpu_quota(tx.conn(), &account.id, quota).await?;
        tx.commit().await?;
        Ok(())
    }

    /// An account's vCPU quota.
    pub async fn vcpu_quota(&self, account: &AccountId) -> ApiResult<u32> {
        let mut c = self.store.read().await?;
        Ok(store::account_by_id(&mut c, account.as_str())
            .await?
            .map(|a| a.vcpu_quota)
            .unwrap_or(instances::DEFAULT_VCPU_QUOTA))
    }

    pub async fn accounts(&self) -> ApiResult<Vec<Account>> {
        let mut c = self.store.read().await?;
        Ok(store::list_accounts(&mut c).await?)
    }
}

/// Seals the secret access keys older versions stored in clear, and checks that the key
/// opens the sealed ones (a server started with another key would answer every request
/// with AuthFailure: it stops instead).
async fn seal_stored_secrets(c: &mut sqlx::AnyConnection, sealer: &Sealer) -> anyhow::Result<usize> {
    let mut sealed_now = 0;
    for (key_id, stored) in store::all_access_key_secrets(c).await? {
        let what = secrets::access_key_context(&key_id);
        if secrets::is_sealed(&stored) {
            sealer.open(&what, &stored).with_context(|| {
                format!(
                    "the secrets key {} does not open the access keys stored in this database: \
                     start with the key they were sealed with (--secrets-key-file)",
                    sealer.source
                )
            })?;
        } else {
            store::set_access_key_secret(c, &key_id, &sealer.seal(&what, stored.as_bytes())?).await?;
            sealed_now += 1;
        }
    }
    if sealed_now > 0 {
        tracing::info!(count = sealed_now, "secret access keys stored in clear sealed");
    }
    Ok(sealed_now)
}

/// `AKIA` + 16 uppercase letters and digits, like AWS's long-term keys.
fn new_access_key_id() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    let tail: String = (0..16).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect();
    format!("AKIA{tail}")
}
