//! The `strato` command: serve the cloud, manage accounts, measure the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use strato::server;

#[derive(Parser)]
#[command(name = "strato", version, about = "A compute cloud behind the Amazon EC2 API")]
struct Cli {
    /// Where the cloud keeps its database, catalogue and AWS CLI config.
    #[arg(long, global = true, env = "STRATO_DATA_DIR", default_value = "/var/lib/strato")]
    data_dir: PathBuf,
    /// The region this cloud is; its zones are REGION + a, b, c. Fixed at first start.
    #[arg(long, global = true, env = "STRATO_REGION", default_value = "local-1")]
    region: String,
    /// Where downloads and built images are cached, shared by every data dir.
    #[arg(long, global = true, env = "STRATO_CACHE_DIR", default_value = "/var/cache/strato")]
    cache_dir: PathBuf,
    /// The control plane's database: a PostgreSQL server (`postgres://USER:PASSWORD@HOST/DB`;
    /// the database must exist, the schema is made at first start), or by default the SQLite
    /// file DATA_DIR/strato.db. The data dir still holds images, volumes and VMs.
    #[arg(long, global = true, env = "STRATO_DATABASE")]
    database: Option<String>,
    /// Where images, volumes and snapshots are kept: a path every host of the cloud reaches
    /// (a shared filesystem) when several `strato serve` share a database; by default the
    /// data dir.
    #[arg(long, global = true, env = "STRATO_STORAGE_DIR")]
    storage_dir: Option<PathBuf>,
    /// The key that seals secrets in the database (secret access keys, the agent API's TLS
    /// key): a file of 64 hex digits, mode 0600 (`openssl rand -hex 32`). By default
    /// DATA_DIR/secrets.key, made at first start. Every server of a shared database needs
    /// the same key; a key that does not open what is stored stops the start.
    #[arg(long, global = true, env = "STRATO_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the cloud on this machine: the EC2 API and the host agent that runs instances as
    /// QEMU VMs (creates the data dir, the admin account and DATA_DIR/aws-config on first
    /// start, and builds the minimal image if the cache lacks it).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// Do not build and register the minimal image at start.
        #[arg(long)]
        no_image_build: bool,
        /// Where instances' public addresses come from: a block inside 127.0.0.0/8 (from
        /// /16 to /30), on the host's loopback, so that `ssh root@PUBLIC_IP` works from
        /// this machine. Two data dirs on one host need blocks that differ in their low 22
        /// bits (e.g. 127.100.0.0/16 and 127.101.0.0/16).
        #[arg(long, env = "STRATO_PUBLIC_POOL", default_value = strato::net::DEFAULT_PUBLIC_POOL)]
        public_pool: String,
        /// How much guest memory the host promises, as a multiple of its RAM: RunInstances
        /// answers InsufficientInstanceCapacity beyond it. Guests touch little of theirs
        /// (a restored minimal instance of 512 MiB costs the host about 70-90 MiB).
        #[arg(long, env = "STRATO_MEMORY_OVERCOMMIT", default_value_t = strato::control::instances::MEMORY_OVERCOMMIT)]
        memory_overcommit: f64,
        /// How many guest vCPUs the host promises per core: RunInstances places no more.
        #[arg(long, env = "STRATO_VCPU_OVERCOMMIT", default_value_t = strato::control::hosts::VCPU_OVERCOMMIT)]
        vcpu_overcommit: f64,
        /// The availability zone this machine serves (e.g. local-1b); by default every zone
        /// of the region, so that one machine is a whole cloud. A zone no live host serves
        /// is not `available`.
        #[arg(long, env = "STRATO_AZ")]
        az: Option<String>,
        /// Seconds without a heartbeat after which a host is down (its instances impaired,
        /// then recovered elsewhere): kept in the database for every server of it (default
        /// 10, or what was set before).
        #[arg(long, env = "STRATO_HOST_TIMEOUT")]
        host_timeout: Option<f64>,
        /// Also serve the agent API over TLS at this address (e.g. 10.0.0.1:8788), for
        /// `strato agent` on other machines: a self-signed certificate, kept in the
        /// database, that agents pin by the SHA-256 inside their join token.
        #[arg(long, env = "STRATO_AGENT_LISTEN")]
        agent_listen: Option<SocketAddr>,
        /// This host's address on the network between hosts (the underlay): the local end
        /// of the VXLAN tunnels (UDP 4789, one VNI per VPC) that join a VPC's instances on
        /// different hosts. Without it, this host's instances reach no other host's.
        #[arg(long, env = "STRATO_UNDERLAY")]
        underlay: Option<std::net::Ipv4Addr>,
        /// Connections the EC2 API serves at once (beyond it, new ones wait in the kernel's
        /// backlog); a request's head must arrive within 10 s and its body within 30 s.
        #[arg(long, env = "STRATO_MAX_CONNECTIONS", default_value_t = strato::api::listen::MAX_CONNECTIONS)]
        max_connections: usize,
        /// The users VMs run as, FIRST-LAST (each cold-booted VM's QEMU drops root to a user
        /// of its own from this range before its guest runs: no capability, and no file of
        /// the data dir it may open; launch-snapshot restores still run as root), or `root`
        /// to run every VM as root.
        #[arg(long, env = "STRATO_VM_USERS", default_value = "2900000000-2900065535")]
        vm_users: String,
    },
    /// End this data dir's VMs (by their pids) and remove its networks from the host: VPC
    /// namespaces, dnsmasqs, uplinks, routes and nftables table. For after `serve` stopped:
    /// instances that were running come back stopped on the next start.
    Down,
    /// Manage tenant accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// The hosts that run instances: each `strato serve` registers its machine as one.
    Host {
        #[command(subcommand)]
        command: HostCommand,
    },
    /// Make this machine a host of a running control plane, without access to its database:
    /// joins with a token from `strato host token` (once; the host's id and credential are
    /// then kept in DATA_DIR/agent.json), registers its capacity, heartbeats and runs the
    /// instances placed on it. --storage-dir must be the control plane's storage (images,
    /// volumes) as this machine sees it. --control-plane is https://IP:PORT (a server's
    /// --agent-listen; TLS, its certificate pinned by the token) or, on loopback only,
    /// the plain http:// EC2 endpoint.
    Agent {
        /// The control plane: https://IP:PORT (a server's --agent-listen) or, on this
        /// machine's loopback, its EC2 endpoint http://127.0.0.1:8787.
        #[arg(long)]
        control_plane: String,
        /// A join token (first start only).
        #[arg(long, env = "STRATO_JOIN_TOKEN")]
        token: Option<String>,
        /// The zone this host serves; every zone by default.
        #[arg(long)]
        az: Option<String>,
        #[arg(long, default_value_t = strato::control::hosts::VCPU_OVERCOMMIT)]
        vcpu_overcommit: f64,
        #[arg(long, default_value_t = strato::control::instances::MEMORY_OVERCOMMIT)]
        memory_overcommit: f64,
        /// This host's address on the network between hosts (the underlay): the local end
        /// of the VXLAN tunnels (UDP 4789, one VNI per VPC) that join a VPC's instances on
        /// different hosts. Without it, this host's instances reach no other host's.
        #[arg(long, env = "STRATO_UNDERLAY")]
        underlay: Option<std::net::Ipv4Addr>,
    },
    /// Measure the system.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Build and register machine images (AMIs).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// What each account's instances and volumes cost: per resource, hours or GB-months and
    /// USD, from the usage records (per second, one-minute minimum per start).
    Bill {
        /// One account (name or 12-digit id); all accounts otherwise.
        #[arg(long)]
        account: Option<String>,
        /// First day (YYYY-MM-DD, UTC); default the first of this month.
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
        /// Day after the last (YYYY-MM-DD, exclusive); default now.
        #[arg(long)]
        to: Option<chrono::NaiveDate>,
        /// JSON lines for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the actions this build implements: every EC2 action (of the EC2 model it
    /// decodes, generated from botocore), then those of the other services on the endpoint.
    Actions,
    /// SSH into an instance at its public address (`ssh -i KEY USER@PUBLIC_IP`). The
    /// instance's host key is remembered under its id in DATA_DIR/known_hosts, since public
    /// addresses are reused. Its security groups must open port 22 to 127.0.0.1.
    Ssh {
        /// The instance (any account's: this reads the data dir directly).
        instance_id: String,
        /// The private key of the instance's key pair.
        #[arg(short = 'i', long)]
        key: Option<PathBuf>,
        /// The user to log in as.
        #[arg(short = 'l', long, default_value = "root")]
        user: String,
        /// A command to run instead of a login shell.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The instance metadata service (internal).
    #[command(hide = true)]
    Metadata {
        #[command(subcommand)]
        command: MetadataCommand,
    },
}

#[derive(Subcommand)]
enum MetadataCommand {
    /// Answer one metadata request on stdin/stdout (QEMU user-network guestfwd).
    ServeStdio {
        /// JSON: the instance's metadata and the token key.
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build an image from Debian packages (`minimal` or `debian-12`) into the cache, and
    /// register it in the data dir as a public AMI owned by Strato. A no-op when the cached
    /// build is current, unless --force. `minimal-fast` is the minimal image's disk booted
    /// by Strato's guest kernel (built first if missing, about 4.5 minutes), registered as
    /// `strato-minimal-fast-x86_64`.
    Build {
        /// minimal, minimal-fast or debian-12
        kind: String,
        /// Rebuild even when the cache has a current build.
        #[arg(long)]
        force: bool,
    },
    /// Build Strato's cloud-guest kernel from Debian's linux-source-6.1 (everything built
    /// in; about 4.5 minutes on two cores) into the cache, and print its path.
    GuestKernel,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account with its own access key, default VPC and security group, and add
    /// its profile (named after it) to DATA_DIR/aws-config.
    Create {
        name: String,
        /// The account may only call Describe*/Get* actions (others: UnauthorizedOperation).
        #[arg(long)]
        read_only: bool,
    },
    /// List accounts.
    List,
    /// Set how many vCPUs an account's instances may use at once (default 32).
    SetQuota {
        name: String,
        #[arg(long)]
        vcpus: u32,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// List hosts: zone, capacity, up or down (by their heartbeats), instances placed there.
    List,
    /// Remove a host that is down for good (a decommissioned machine). Refused while it is
    /// up or has instances that are not stopped; its stopped instances start elsewhere.
    Remove { host_id: String },
    /// Make a join token for one host (`strato agent --token`), good once.
    Token {
        /// Minutes until it expires.
        #[arg(long, default_value_t = 60)]
        ttl_minutes: u64,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Scheduling: RunInstances answer time (placement included) with N simulated hosts
    /// spread over the zones, then how long the host monitor takes to recover the instances
    /// of one that dies. Uses --database if given (e.g. PostgreSQL), else a temporary SQLite.
    Schedule {
        /// Simulated hosts (at least 2).
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// RunInstances calls, one instance each.
        #[arg(long, default_value_t = 300)]
        launches: usize,
    },
    /// Launches a minimal image in rounds of COUNT instances at once, first booting cold,
    /// then restored from the launch snapshot, then taken from a warm pool of COUNT VMs
    /// (filled before each round; a pool VM's CPU before it is taken is not counted):
    /// RunInstances to SSH login per instance and
    /// for the whole round, the host CPU used per VM until the last login (and its QEMU's
    /// part), the host memory per VM (PSS, and the drop of the host's MemAvailable), idle
    /// host CPU, and the first guest's boot steps and TCG translated blocks. With --keep
    /// the instances stay running round after round (density).
    FastLaunch {
        /// minimal-fast (Strato's guest kernel) or minimal (Debian's kernel)
        #[arg(long, default_value = "minimal-fast")]
        image: String,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Instances per RunInstances (launched at once).
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value = "t3.nano")]
        instance_type: String,
        /// Only the restored rounds (for big counts: cold VMs take far more memory).
        #[arg(long)]
        restored_only: bool,
        /// Each round's instances stay running (density: --runs 12 --count 25 leaves 300),
        /// all ended at the end.
        #[arg(long)]
        keep: bool,
    },
    /// RunInstances answer times (p50, p99, max) while READERS clients run DescribeInstances
    /// of INSTANCES instances in a loop: with no readers, with one shared database pool and
    /// no gate on reads (as before), and with the store's pools split and reads gated (now),
    /// in one run. In-process, a simulated host; --database if given.
    Reads {
        #[arg(long, default_value_t = 1000)]
        instances: usize,
        #[arg(long, default_value_t = 200)]
        readers: usize,
        #[arg(long, default_value_t = 10)]
        launches: usize,
    },
    /// dd with direct I/O on a hot-plugged EBS volume inside a guest, beside the same dd on
    /// the host's disk (MB/s and ratio).
    Volume,
    /// Signed requests per second and p50/p99 latency of DescribeRegions and
    /// DescribeSecurityGroups over loopback.
    Api {
        /// Seconds per action.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Measure a running server (with --data-dir for its admin credentials) instead of
        /// an in-process one.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Launch the minimal image N times through the API (one at a time) and report p50/p90 of
    /// the RunInstances answer time, RunInstances to `running`, and RunInstances to the guest's
    /// first metadata request; beside them, the same image booted by a bare QEMU.
    Launch {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// minimal, minimal-fast (Strato's guest kernel) or debian-12 (built into the
        /// cache first if missing)
        #[arg(long, default_value = "minimal")]
        image: String,
        #[arg(long, default_value = "t3.nano")]
        instance_type: String,
    },
    /// Boot an image N times with a bare qemu-system-x86_64 and report the time from QEMU's
    /// start to the guest's ready marker and to its sshd answering (median, min, max).
    Boot {
        /// minimal or debian-12 (built into the cache first if missing)
        #[arg(long, default_value = "minimal")]
        image: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Guest memory.
        #[arg(long, default_value_t = 256)]
        memory_mib: u32,
        /// Boot with Strato's guest kernel (built first if missing) instead of the image's.
        #[arg(long)]
        guest_kernel: bool,
    },
}

fn main() -> anyhow::Result<()> {
    // Everything this process makes is its user's only (secrets, tenants' disks).
    strato::secrets::private_umask();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("STRATO_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cli = Cli::parse();
    // Images, volumes and VMs record paths: a relative data dir would break them.
    cli.data_dir = std::path::absolute(&cli.data_dir).context("the data dir")?;
    cli.cache_dir = std::path::absolute(&cli.cache_dir).context("the cache dir")?;
    cli.storage_dir = cli.storage_dir.map(std::path::absolute).transpose().context("the storage dir")?;
    cli.secrets_key_file = cli.secrets_key_file.map(std::path::absolute).transpose().context("the secrets key file")?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(run(cli))
}

/// `--vm-users FIRST-LAST` (or `root`): the first id and how many.
fn parse_vm_users(s: &str) -> anyhow::Result<Option<(u32, u32)>> {
    if s == "root" {
        return Ok(None);
    }
    let parsed =
        s.split_once('-').and_then(|(a, b)| Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?)));
    match parsed {
        Some((first, last)) if first > 0 && last >= first && last < u32::MAX => Ok(Some((first, last - first + 1))),
        _ => anyhow::bail!("--vm-users is FIRST-LAST (user ids above 0, e.g. 2900000000-2900065535) or root"),
    }
}

/// Where a command's control plane is: `--data-dir`, `--database`, `--storage-dir`, `--region`.
struct At {
    data_dir: PathBuf,
    secrets_key: Option<PathBuf>,
    database: Option<String>,
    storage_dir: Option<PathBuf>,
    region: String,
}

async fn open(at: &At) -> anyhow::Result<strato::control::Control> {
    let mut control =
        server::open_control(&at.data_dir, at.database.as_deref(), &at.region, at.secrets_key.as_deref()).await?;
    if let Some(dir) = &at.storage_dir {
        control.storage_dir = dir.clone();
    }
    Ok(control)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let at = At {
        data_dir: cli.data_dir.clone(),
        secrets_key: cli.secrets_key_file.clone(),
        database: cli.database.clone(),
        storage_dir: cli.storage_dir.clone(),
        region: cli.region.clone(),
    };
    match cli.command {
        Command::Serve {
            listen,
            no_image_build,
            public_pool,
            memory_overcommit,
            vcpu_overcommit,
            az,
            host_timeout,
            agent_listen,
            underlay,
            max_connections,
            vm_users,
        } => {
            strato::hypervisor::set_vm_users(parse_vm_users(&vm_users)?);
            let pool = strato::net::parse_public_pool(&public_pool)?;
            anyhow::ensure!(
                memory_overcommit.is_finite() && (0.1..=100.0).contains(&memory_overcommit),
                "--memory-overcommit must be between 0.1 and 100"
            );
            anyhow::ensure!(
                vcpu_overcommit.is_finite() && (0.1..=1000.0).contains(&vcpu_overcommit),
                "--vcpu-overcommit must be between 0.1 and 1000"
            );
            anyhow::ensure!(
                host_timeout.is_none_or(|t| t.is_finite() && (0.5..=3600.0).contains(&t)),
                "--host-timeout must be between 0.5 and 3600 seconds"
            );
            server::serve(server::ServeOptions {
                data_dir: &cli.data_dir,
                cache: &cli.cache_dir,
                listen,
                database: cli.database.as_deref(),
                storage_dir: cli.storage_dir.as_deref(),
                region: &cli.region,
                build_images: !no_image_build,
                public_pool: pool,
                memory_overcommit,
                vcpu_overcommit,
                zone: az,
                host_timeout: host_timeout.map(Duration::from_secs_f64),
                agent_listen,
                underlay,
                secrets_key: cli.secrets_key_file.as_deref(),
                max_connections,
            })
            .await
        }
        Command::Ssh { instance_id, key, user, command } => {
            let control = open(&at).await?;
            let id = strato::ids::InstanceId::parse(&instance_id).map_err(|e| anyhow::anyhow!("{e}"))?;
            let i = control
                .instance_by_id(&id)
                .await?
                .with_context(|| format!("no instance {id} in {}", cli.data_dir.display()))?;
            let ip = i.public_ip.with_context(|| {
                format!("{id} has no public address ({}): launch it with one, or associate an elastic IP", i.state)
            })?;
            let mut ssh = std::process::Command::new("ssh");
            if let Some(k) = key {
                ssh.arg("-i").arg(k);
            }
            ssh.arg("-o")
                .arg(format!("UserKnownHostsFile={}", cli.data_dir.join("known_hosts").display()))
                .args(["-o", "StrictHostKeyChecking=accept-new", "-o"])
                .arg(format!("HostKeyAlias={id}"))
                .arg(format!("{user}@{ip}"))
                .args(&command);
            use std::os::unix::process::CommandExt;
            Err(anyhow::Error::new(ssh.exec()).context("running ssh (openssh-client)"))
        }
        Command::Down => {
            let n = server::down(&cli.data_dir).await;
            println!("Ended {n} VM(s) and removed the networks of {}.", cli.data_dir.display());
            Ok(())
        }
        Command::Account { command: AccountCommand::Create { name, read_only } } => {
            let control = open(&at).await?;
            server::ensure_admin(&control).await?;
            let c = control.create_account(&name, read_only).await.map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
            let path = server::write_aws_config(&control, &cli.data_dir).await?;
            println!(
                "Account {} ({}) created{}.",
                c.account_id,
                c.account_name,
                if read_only { ", read-only" } else { "" }
            );
            println!("  aws_access_key_id = {}", c.access_key_id);
            println!("  aws_secret_access_key = {}", c.secret_access_key);
            println!("Its profile is in {}:", path.display());
            println!(
                "  export AWS_CONFIG_FILE={} AWS_PROFILE={}",
                path.display(),
                server::profile_name(&c.account_name)
            );
            Ok(())
        }
        Command::Account { command: AccountCommand::SetQuota { name, vcpus } } => {
            let control = open(&at).await?;
            control.set_vcpu_quota(&name, vcpus).await.map_err(|e| anyhow::anyhow!("{}: {e}", e.code()))?;
            println!("Account {name} may now run {vcpus} vCPUs at once.");
            Ok(())
        }
        Command::Host { command: HostCommand::List } => {
            let control = open(&at).await?;
            let live = control.live_instances().await?;
            println!(
                "{:<19} {:<16} {:<11} {:>5} {:>9} {:<5} {:>9} {:>9}  UNDERLAY",
                "HOST", "NAME", "ZONE", "VCPUS", "MEMORY", "STATE", "HEARTBEAT", "INSTANCES"
            );
            for h in control.hosts().await? {
                let on: Vec<_> = live.iter().filter(|i| i.host_id.as_deref() == Some(h.id.as_str())).collect();
                let age = (chrono::Utc::now() - h.heartbeat_at).num_milliseconds() as f64 / 1000.0;
                println!(
                    "{:<19} {:<16} {:<11} {:>5} {:>5} MiB {:<5} {:>7.1} s {:>9}  {}",
                    h.id,
                    h.name,
                    h.zone.as_deref().unwrap_or("all"),
                    h.vcpus,
                    h.memory_mib,
                    if control.host_live(&h) { "up" } else { "down" },
                    age,
                    on.len(),
                    h.underlay.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        Command::Host { command: HostCommand::Token { ttl_minutes } } => {
            let token = open(&at).await?.create_join_token(Duration::from_secs(ttl_minutes * 60)).await?;
            println!("{token}");
            Ok(())
        }
        Command::Agent { control_plane, token, az, vcpu_overcommit, memory_overcommit, underlay } => {
            let mut spec = strato::control::hosts::HostSpec::this_machine(az, vcpu_overcommit, memory_overcommit);
            spec.underlay = underlay;
            let storage = at.storage_dir.clone().unwrap_or_else(|| at.data_dir.clone());
            server::run_agent(&at.data_dir, &storage, &control_plane, token.as_deref(), &spec).await
        }
        Command::Host { command: HostCommand::Remove { host_id } } => {
            let id = strato::ids::HostId::parse(&host_id).map_err(|e| anyhow::anyhow!("{e}"))?;
            open(&at).await?.remove_host(&id).await?;
            println!("Host {id} removed.");
            Ok(())
        }
        Command::Account { command: AccountCommand::List } => {
            let control = open(&at).await?;
            for a in control.accounts().await.map_err(strato::api::error::ApiError::into_anyhow)? {
                println!(
                    "{}  {:<20} {}{}",
                    a.id,
                    a.name,
                    a.created_at.format("%Y-%m-%d %H:%M:%S"),
                    if a.read_only { "  read-only" } else { "" }
                );
            }
            Ok(())
        }
        Command::Bench { command: BenchCommand::Api { seconds, connections, endpoint } } => {
            let opts = strato::bench::Options {
                duration: Duration::from_secs(seconds),
                connections,
                data_dir: endpoint.as_ref().map(|_| cli.data_dir.clone()),
                database: cli.database.clone(),
                endpoint,
                actions: vec!["DescribeRegions".into(), "DescribeSecurityGroups".into()],
            };
            println!(
                "{:<24} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
                "action", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "errors"
            );
            for r in strato::bench::run(opts).await? {
                println!(
                    "{:<24} {:>10} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>7}",
                    r.action,
                    r.requests,
                    r.per_second(),
                    r.p50_us as f64 / 1000.0,
                    r.p99_us as f64 / 1000.0,
                    r.max_us as f64 / 1000.0,
                    r.errors
                );
            }
            Ok(())
        }
        Command::Image { command: ImageCommand::Build { kind, force } } => {
            let control = open(&at).await?;
            let (built, id, new) = if kind == "minimal-fast" {
                server::build_and_register_fast(&control, &cli.cache_dir, force).await?
            } else {
                let kind = strato::image::Kind::parse(&kind)
                    .context("the image kinds are minimal, minimal-fast and debian-12")?;
                server::build_and_register(&control, &cli.cache_dir, kind, force).await?
            };
            println!(
                "{} {} ({}): {} MiB disk, {} MiB used, built in {:.1}s",
                id,
                if kind == "minimal-fast" { strato::control::images::FAST_IMAGE_NAME } else { &built.manifest.name },
                if new { "registered" } else { "already registered" },
                built.manifest.disk_bytes >> 20,
                built.manifest.disk_used_bytes >> 20,
                built.manifest.build_seconds
            );
            Ok(())
        }
        Command::Image { command: ImageCommand::GuestKernel } => {
            let cache = cli.cache_dir.clone();
            let progress = strato::image::StderrProgress(std::time::Instant::now());
            let path = tokio::task::spawn_blocking(move || strato::image::guest_kernel(&cache, &progress)).await??;
            println!("{}", path.display());
            Ok(())
        }
        Command::Metadata { command: MetadataCommand::ServeStdio { config } } => {
            let cfg: strato::metadata::StdioConfig = serde_json::from_slice(&std::fs::read(&config)?)?;
            let stdin = std::io::stdin();
            strato::metadata::serve_stdio(&cfg, &mut stdin.lock(), &mut std::io::stdout().lock())?;
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::FastLaunch { image, runs, count, instance_type, restored_only, keep },
        } => {
            anyhow::ensure!(
                matches!(image.as_str(), "minimal" | "minimal-fast"),
                "the images are minimal and minimal-fast"
            );
            let rounds = strato::bench::Rounds { image: &image, runs, count, instance_type: &instance_type, keep };
            strato::bench::fast_launch(&cli.cache_dir, &rounds, restored_only).await
        }
        Command::Bench { command: BenchCommand::Schedule { hosts, launches } } => {
            strato::bench::schedule(&cli.cache_dir, hosts, launches, cli.database.as_deref()).await
        }
        Command::Bench { command: BenchCommand::Reads { instances, readers, launches } } => {
            strato::bench::reads(&cli.cache_dir, instances, readers, launches, cli.database.as_deref()).await
        }
        Command::Bench { command: BenchCommand::Volume } => strato::bench::volume(&cli.cache_dir).await,
        Command::Bench { command: BenchCommand::Launch { runs, image, instance_type } } => {
            anyhow::ensure!(
                matches!(image.as_str(), "minimal" | "minimal-fast" | "debian-12"),
                "the images are minimal, minimal-fast and debian-12"
            );
            strato::bench::launch(&cli.cache_dir, runs, &image, &instance_type).await
        }
        Command::Bench { command: BenchCommand::Boot { image, runs, memory_mib, guest_kernel } } => {
            let kind = strato::image::Kind::parse(&image).context("the image kinds are minimal and debian-12")?;
            let cache = cli.cache_dir.clone();
            tokio::task::spawn_blocking(move || strato::bench::boot(kind, &cache, runs, memory_mib, guest_kernel))
                .await?
        }
        Command::Bill { account, from, to, json } => {
            use chrono::{Datelike, TimeZone, Utc};
            let control = open(&at).await?;
            let now = Utc::now();
            let from = match from {
                Some(d) => Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).context("date")?),
                None => Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().context("date")?,
            };
            let to = match to {
                Some(d) => Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).context("date")?),
                None => now,
            };
            anyhow::ensure!(from < to, "--from must be before --to");
            let accounts = control.accounts().await.map_err(strato::api::error::ApiError::into_anyhow)?;
            let selected = match &account {
                Some(a) => Some(
                    accounts
                        .iter()
                        .find(|x| &x.name == a || x.id.as_str() == a)
                        .with_context(|| format!("no account {a}"))?
                        .id
                        .clone(),
                ),
                None => None,
            };
            let lines = control
                .bill(selected.as_ref(), from, to, now)
                .await
                .map_err(strato::api::error::ApiError::into_anyhow)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "from": from.to_rfc3339(), "to": to.to_rfc3339(), "currency": "USD", "lines": lines })
                );
                return Ok(());
            }
            println!("Bill from {} to {} (USD)", from.format("%Y-%m-%d %H:%M:%S"), to.format("%Y-%m-%d %H:%M:%S"));
            let mut grand = 0.0;
            for a in accounts.iter().filter(|a| selected.as_ref().is_none_or(|s| s == &a.id)) {
                let mine: Vec<_> = lines.iter().filter(|l| l.account_id == a.id.as_str()).collect();
                let total: f64 = mine.iter().map(|l| l.cost).sum();
                grand += total;
                println!("\naccount {} ({})", a.id, a.name);
                if mine.is_empty() {
                    println!("  no usage");
                    continue;
                }
                println!("  {:<24} {:<24} {:>14} {:<6} {:>12}", "resource", "usage type", "quantity", "unit", "cost");
                for l in &mine {
                    println!(
                        "  {:<24} {:<24} {:>14.6} {:<6} {:>12.6}",
                        l.resource_id, l.usage_type, l.quantity, l.unit, l.cost
                    );
                }
                println!("  {:<24} {:<24} {:>14} {:<6} {:>12.6}", "total", "", "", "", total);
            }
            println!("\ntotal {grand:.6} USD");
            Ok(())
        }
        Command::Actions => {
            for a in strato::api::SUPPORTED_ACTIONS {
                println!("ec2 {a}");
            }
            println!("sts GetCallerIdentity");
            println!("ce GetCostAndUsage");
            eprintln!(
                "{} of the {} EC2 actions of the model (botocore {}); requests for the others answer InvalidAction",
                strato::api::SUPPORTED_ACTIONS.len(),
                strato::api::model::operations().len(),
                strato::api::model::BOTOCORE_VERSION
            );
            Ok(())
        }
    }
}
