//! `strato serve` and `strato account`: a data dir, the control plane on its database, the
//! admin account, the AWS CLI config file, and the API listener.
//!
//! Data dir layout:
//! - `strato.db` (+ `-wal`, `-shm`): the SQLite database;
//! - `instance-types.toml`: the catalogue with prices (written once, then edited by hand);
//! - `aws-config`: an AWS CLI config file with one profile per account (`strato` for the
//!   admin account), rewritten when accounts change. It holds secrets: mode 0600;
//! - `secrets.key`: the key secrets are sealed with in the database (`crate::secrets`),
//!   unless `--secrets-key-file` names another.
//!
//! The data dir is 0700 and every file in it root's only (`secrets::make_private` at start).

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;

use crate::api::{self, ApiState};
use crate::catalog::{Catalogue, Region};
use crate::control::{Control, Credentials, ADMIN_ACCOUNT};
use crate::ids::ImageId;
use crate::image::{self, Built, Kind, StderrProgress};
use crate::secrets::Sealer;
use crate::store::{self, Store};

/// The profile name of the admin account in `aws-config`.
pub const ADMIN_PROFILE: &str = "strato";

/// Opens the control plane of a data dir: its database (`database`, a `postgres://` URL, or
/// by default the SQLite file `DATA_DIR/strato.db`), catalogue and images, with secrets
/// sealed under `secrets_key` (by default `DATA_DIR/secrets.key`, made at first start). The
/// data dir is made private first (`secrets::make_private`).
pub async fn open_control(
    data_dir: &Path,
    database: Option<&str>,
    region: &str,
    secrets_key: Option<&Path>,
) -> anyhow::Result<Control> {
    private_data_dir(data_dir)?;
    let store = Store::open(&store::database_url(database, data_dir)).await?;
    let sealer = match secrets_key {
        Some(path) => Sealer::from_file(path, false)?,
        None => {
            // Made here only for a database that holds no sealed secret yet: another
            // server's database needs that server's key.
            let mut c = store.read().await?;
            let sealed = store::all_access_key_secrets(&mut c).await?.iter().any(|(_, s)| crate::secrets::is_sealed(s));
            drop(c);
            let path = data_dir.join("secrets.key");
            if sealed && !path.exists() {
                anyhow::bail!(
                    "this database's secrets are sealed with a key this data dir does not have ({}): \
                     give the key they were sealed with (--secrets-key-file)",
                    path.display()
                );
            }
            Sealer::from_file(&path, true)?
        }
    };
    let catalogue = Catalogue::load_or_init(&data_dir.join("instance-types.toml"))?;
    let mut control = Control::new(store, Region::new(region)?, catalogue, data_dir.to_owned(), sealer).await?;
    control.load_host_timeout().await?;
    Ok(control)
}

/// Makes (or keeps) a data or storage dir, private to this user: the dir 0700, every file in
/// it without group or other bits, also files made by older versions.
pub fn private_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let changed = crate::secrets::make_private(dir)?;
    if changed > 0 {
        tracing::info!(dir = %dir.display(), changed, "files made private (group and other bits removed)");
    }
    Ok(())
}

/// The admin account's credentials, creating the account on first start.
pub async fn ensure_admin(control: &Control) -> anyhow::Result<Credentials> {
    if let Some(c) = control.credentials(ADMIN_ACCOUNT).await.map_err(crate::api::error::ApiError::into_anyhow)? {
        return Ok(c);
    }
    control
        .create_account(ADMIN_ACCOUNT, false)
        .await
        .map_err(|e| e.into_anyhow().context("creating the admin account"))
}

pub fn profile_name(account_name: &str) -> &str {
    if account_name == ADMIN_ACCOUNT {
        ADMIN_PROFILE
    } else {
        account_name
    }
}

/// Rewrites `DATA_DIR/aws-config` with a profile per account.
pub async fn write_aws_config(control: &Control, data_dir: &Path) -> anyhow::Result<PathBuf> {
    let endpoint = endpoint(control).await?;
    let mut text = String::from("# Written by strato: one profile per account. Use with\n#   AWS_CONFIG_FILE=THIS_FILE AWS_PROFILE=strato aws ec2 describe-regions\n");
    for account in control.accounts().await.map_err(crate::api::error::ApiError::into_anyhow)? {
        if let Some(c) = control.credentials(&account.name).await.map_err(crate::api::error::ApiError::into_anyhow)? {
            text.push_str(&format!(
                "\n[profile {}]\n# account {} ({})\naws_access_key_id = {}\naws_secret_access_key = {}\nregion = {}\nendpoint_url = {}\n",
                profile_name(&c.account_name),
                c.account_id,
                c.account_name,
                c.access_key_id,
                c.secret_access_key,
                control.region.name,
                endpoint
            ));
        }
    }
    let path = data_dir.join("aws-config");
    let tmp = data_dir.join("aws-config.tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The endpoint URL last served from this data dir.
pub async fn endpoint(control: &Control) -> anyhow::Result<String> {
    let mut c = control.store().read().await?;
    Ok(store::get_meta(&mut c, "endpoint").await?.unwrap_or_else(|| "http://127.0.0.1:8787".into()))
}

/// Builds (or finds in the cache) an image and registers it in this data dir.
pub async fn build_and_register(
    control: &Control,
    cache: &Path,
    kind: Kind,
    force: bool,
) -> anyhow::Result<(Built, ImageId, bool)> {
    let cache = cache.to_owned();
    let progress = StderrProgress(std::time::Instant::now());
    let built = tokio::task::spawn_blocking(move || image::build(kind, &cache, force, &progress)).await??;
    let (id, new) = control
        .register_built(&built)
        .await
        .map_err(|e| e.into_anyhow().context(format!("registering {}", kind.slug())))?;
    Ok((built, id, new))
}

/// The minimal image (built if missing) with Strato's guest kernel (built if missing, about
/// 4.5 minutes), registered as `strato-minimal-fast-x86_64`.
pub async fn build_and_register_fast(
    control: &Control,
    cache: &Path,
    force: bool,
) -> anyhow::Result<(Built, ImageId, bool)> {
    let (built, _, _) = build_and_register(control, cache, Kind::Minimal, force).await?;
    let cache = cache.to_owned();
    let progress = StderrProgress(std::time::Instant::now());
    let kernel = tokio::task::spawn_blocking(move || image::guest_kernel(&cache, &progress)).await??;
    let (id, new) = control
        .register_fast(&built, &kernel)
        .await
        .map_err(|e| e.into_anyhow().context("registering minimal-fast"))?;
    Ok((built, id, new))
}

/// What `strato serve` runs with.
pub struct ServeOptions<'a> {
    pub data_dir: &'a Path,
    pub cache: &'a Path,
    pub listen: SocketAddr,
    /// `--database`: a `postgres://` URL, or `None` for the data dir's SQLite file.
    pub database: Option<&'a str>,
    /// `--storage-dir`: images, volumes and snapshots; `None` for the data dir.
    pub storage_dir: Option<&'a Path>,
    pub region: &'a str,
    /// Build the minimal image if the cache lacks it, and register it.
    pub build_images: bool,
    pub public_pool: crate::control::cidr::Ipv4Cidr,
    pub memory_overcommit: f64,
    pub vcpu_overcommit: f64,
    /// `--az`: the one zone this machine serves; `None` for every zone of the region.
    pub zone: Option<String>,
    /// `--host-timeout`: set for every server of the database; `None` keeps what it has.
    pub host_timeout: Option<std::time::Duration>,
    /// `--agent-listen`: where the agent API is also served over TLS, for agents on other
    /// machines.
    pub agent_listen: Option<SocketAddr>,
    /// `--underlay`: this host's end of the VXLAN tunnels that carry VPCs across hosts.
    pub underlay: Option<std::net::Ipv4Addr>,
    /// `--secrets-key-file`: the key secrets are sealed with; `None` for
    /// `DATA_DIR/secrets.key`.
    pub secrets_key: Option<&'a Path>,
    /// `--max-connections`: connections the API (and the agent API) serve at once.
    pub max_connections: usize,
}

/// Registers this data dir's host (its id kept in `DATA_DIR/host-id`, so a restart is the
/// same host) and returns its id.
pub async fn register_host(
    control: &Control,
    data_dir: &Path,
    spec: &crate::control::hosts::HostSpec,
) -> anyhow::Result<crate::ids::HostId> {
    let file = data_dir.join("host-id");
    let known = match std::fs::read_to_string(&file) {
        Ok(s) => Some(crate::ids::HostId::parse(s.trim()).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", file.display()))),
    };
    let id = control.register_host(known.clone(), spec).await?;
    if known.is_none() {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{id}\n")).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(id)
}

/// Runs the API until SIGINT or SIGTERM. With `build_images`, first builds the minimal
/// image if the cache lacks it and registers it (a failure is logged, not fatal).
pub async fn serve(opts: ServeOptions<'_>) -> anyhow::Result<()> {
    let ServeOptions {
        data_dir,
        cache,
        listen,
        database,
        storage_dir,
        region,
        build_images,
        public_pool,
        memory_overcommit,
        vcpu_overcommit,
        zone,
        host_timeout,
        agent_listen,
        underlay,
        secrets_key,
        max_connections,
    } = opts;
    let mut control = open_control(data_dir, database, region, secrets_key).await?;
    if let Some(dir) = storage_dir {
        private_data_dir(dir)?;
        control.storage_dir = dir.to_owned();
    }
    control.public_pool = public_pool;
    control.memory_overcommit = memory_overcommit;
    if let Some(t) = host_timeout {
        control.set_host_timeout(t).await?;
    }
    if build_images {
        match build_and_register(&control, cache, Kind::Minimal, false).await {
            Ok((_, id, true)) => tracing::info!(image_id = %id, "minimal image registered"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "the minimal image is not available"),
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr()?;
    let endpoint = format!("http://{local}");
    {
        let mut tx = control.store().begin_write().await?;
        store::set_meta(tx.conn(), "endpoint", &endpoint).await?;
        tx.commit().await?;
    }
    let admin = ensure_admin(&control).await?;
    let config = write_aws_config(&control, data_dir).await?;
    let mut spec = crate::control::hosts::HostSpec::this_machine(zone.clone(), vcpu_overcommit, memory_overcommit);
    spec.underlay = underlay;
    let host = register_host(&control, data_dir, &spec).await?;
    let control = Arc::new(control);
    let agent_api = match agent_listen {
        Some(addr) => {
            let identity = crate::agent::tls::identity(&control).await?;
            let tcp = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr}"))?;
            let tls = crate::agent::tls::TlsListener::new(tcp, crate::agent::tls::server_config(&identity)?)?;
            println!(
                "Agents on other machines: https://{} (certificate SHA-256 {}, carried by `strato host token`).",
                axum::serve::Listener::local_addr(&tls)?,
                identity.fingerprint()
            );
            let _ = std::io::stdout().flush();
            let router = api::agent_router(Arc::new(ApiState { control: control.clone() }));
            Some(tokio::spawn(async move {
                let limits = api::listen::Limits { max_connections, ..Default::default() };
                if let Err(e) = api::listen::serve(tls, router, limits, std::future::pending()).await {
                    tracing::error!(error = %e, "the agent API listener stopped");
                }
            }))
        }
        None => None,
    };
    println!(
        "Strato is serving the EC2 API at {endpoint} (region {region}, zones {}).",
        control.region.zones.join(", ")
    );
    println!(
        "This machine is host {host} ({} vCPUs, {} MiB), serving {}.",
        spec.vcpus,
        spec.memory_mib,
        zone.as_deref().unwrap_or("every zone")
    );
    println!("Admin account {} ({}). Use it with the AWS CLI:", admin.account_id, admin.account_name);
    println!("  export AWS_CONFIG_FILE={} AWS_PROFILE={ADMIN_PROFILE}", config.display());
    println!("  aws ec2 describe-regions");
    let _ = std::io::stdout().flush();
    tracing::info!(%endpoint, data_dir = %data_dir.display(), "serving");
    let agent = crate::agent::Agent::new(control.clone(), data_dir, host.clone())?;
    // The agent, its heartbeats and the host monitor read from the store's priority pool:
    // requests that only read never hold them up.
    let agent_task = tokio::spawn(store::priority(agent.run()));
    let heartbeats = tokio::spawn(store::priority(crate::agent::Agent::heartbeats(control.clone(), host.clone())));
    let monitor = tokio::spawn(store::priority(crate::control::hosts::monitor(control.clone(), host)));
    let state = Arc::new(ApiState { control: control.clone() });
    let limits = api::listen::Limits { max_connections, ..Default::default() };
    api::listen::serve(listener, api::router(state), limits, shutdown_signal()).await?;
    if let Some(t) = agent_api {
        t.abort();
    }
    // Instances' VMs keep running: they are daemonized QEMUs the next start adopts.
    agent_task.abort();
    heartbeats.abort();
    monitor.abort();
    end_pool_vms(data_dir).await;
    control.store().close().await;
    tracing::info!("stopped");
    Ok(())
}

/// `strato down`: ends the data dir's VMs by their pids and removes its networks.
pub async fn down(data_dir: &Path) -> usize {
    let mut n = 0;
    // Instances, launch-snapshot templates being made, and warm-pool VMs.
    for dir in ["instances", "launch-snapshots", "warm-pool"] {
        if let Ok(entries) = std::fs::read_dir(data_dir.join(dir)) {
            for e in entries.flatten() {
                if let Some(vm) = crate::hypervisor::Vm::adopt(&e.path()) {
                    vm.kill().await;
                    n += 1;
                }
            }
        }
    }
    // And any left whose run directory went.
    n += crate::hypervisor::end_orphans(data_dir).await;
    crate::net::Site::new(data_dir).teardown().await;
    n
}

/// At shutdown: the warm pool's VMs end (they are no instance's; a next start would end them
/// anyway), and any QEMU whose run directory is gone. Instances' VMs run on.
async fn end_pool_vms(data_dir: &Path) {
    for e in std::fs::read_dir(data_dir.join("warm-pool")).into_iter().flatten().flatten() {
        if let Some(vm) = crate::hypervisor::Vm::adopt(&e.path()) {
            vm.kill().await;
        }
    }
    crate::hypervisor::end_orphans(data_dir).await;
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// `strato agent`: joins (or rejoins) the control plane at `url` and runs this machine's
/// agent over the agent API until SIGINT or SIGTERM.
pub async fn run_agent(
    data_dir: &Path,
    storage_dir: &Path,
    url: &str,
    token: Option<&str>,
    spec: &crate::control::hosts::HostSpec,
) -> anyhow::Result<()> {
    use crate::agent::remote::{call, token_fingerprint, Endpoint, Joined, RemoteLink};
    private_data_dir(data_dir)?;
    if storage_dir != data_dir {
        private_data_dir(storage_dir)?;
    }
    let file = data_dir.join("agent.json");
    let joined: Joined = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", file.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = token.context("this host has not joined yet: give --token (from `strato host token`)")?;
            let fingerprint = token_fingerprint(token);
            let endpoint = Endpoint::parse(url, fingerprint)?;
            let answer = call(&endpoint, None, "join", &serde_json::json!({"token": token, "spec": spec})).await?;
            let joined = Joined {
                control_plane: url.to_owned(),
                host_id: serde_json::from_value(answer["host_id"].clone())?,
                credential: answer["credential"].as_str().context("no credential")?.to_owned(),
                fingerprint: fingerprint.map(str::to_owned),
            };
            let tmp = file.with_extension("tmp");
            {
                use std::os::unix::fs::OpenOptionsExt;
                let mut f =
                    std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
                f.write_all(&serde_json::to_vec(&joined)?)?;
            }
            std::fs::rename(&tmp, &file)?;
            joined
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", file.display()))),
    };
    let link = Arc::new(RemoteLink::connect(&joined, spec, storage_dir).await?);
    println!(
        "This machine is host {} ({} vCPUs, {} MiB), serving {}, for the control plane at {}.",
        joined.host_id,
        spec.vcpus,
        spec.memory_mib,
        spec.zone.as_deref().unwrap_or("every zone"),
        joined.control_plane
    );
    let _ = std::io::stdout().flush();
    let agent = crate::agent::Agent::new(link.clone(), data_dir, joined.host_id.clone())?;
    let heartbeats = crate::agent::Agent::<RemoteLink>::heartbeats(link, joined.host_id.clone());
    tokio::select! {
        _ = async { tokio::join!(agent.run(), heartbeats) } => {}
        _ = shutdown_signal() => {}
    }
    end_pool_vms(data_dir).await;
    Ok(())
}
