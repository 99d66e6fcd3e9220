//! A real `strato serve` on a random loopback port with its own data dir, and the real AWS
//! CLI and boto3 (from the virtualenv that `scripts/test.sh` creates) pointed at it. The
//! server is stopped (by its PID, which we started) and the data dir removed on drop, also
//! when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A simulated host: the zone it serves (`None`: every zone), its cores and RAM (no
/// overcommit: placement fills it exactly).
#[derive(Clone, Copy)]
pub struct SimHost {
    pub zone: Option<&'static str>,
    pub vcpus: u32,
    pub memory_mib: u64,
}

async fn start_sim_host(
    control: std::sync::Arc<strato::control::Control>,
    n: usize,
    h: SimHost,
) -> tokio::task::AbortHandle {
    let spec = strato::control::hosts::HostSpec {
        name: format!("sim{n}"),
        zone: h.zone.map(str::to_owned),
        vcpus: h.vcpus,
        memory_mib: h.memory_mib,
        vcpu_overcommit: 1.0,
        memory_overcommit: 1.0,
        underlay: None,
    };
    let agent = strato::agent::sim::SimAgent::register(control, &spec).await.expect("simulated host");
    tokio::spawn(agent.run()).abort_handle()
}

pub enum HostCommand {
    Stop(usize),
    Add(SimHost, std::sync::mpsc::Sender<()>),
}

pub struct Cloud {
    child: Option<Child>,
    /// For an in-process server with the simulated agent: its stop signal and thread.
    sim: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
    /// For simulated hosts: stops or adds one.
    sim_hosts: Option<tokio::sync::mpsc::UnboundedSender<HostCommand>>,
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub addr: String,
    /// Whether `strato serve` runs with launch snapshots (kept by `restart`).
    launch_snapshots: bool,
}

/// The virtualenv holding the AWS CLI and boto3.
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("STRATO_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    assert!(
        dir.join("bin/aws").exists(),
        "the AWS CLI is not in {}: run scripts/test.sh, which creates the virtualenv",
        dir.display()
    );
    dir
}

/// The image cache shared by all tests (scripts/test builds the minimal image into it).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("STRATO_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/strato"))
}

pub fn strato_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strato")
}

/// `strato --data-dir DIR` with this test's database (see `test_database`), image cache and
/// quiet logs.
pub fn strato(dir: &Path) -> Command {
    let mut cmd = Command::new(strato_bin());
    cmd.arg("--data-dir").arg(dir).env("STRATO_CACHE_DIR", cache_dir()).env("STRATO_LOG", "warn");
    match test_database(dir) {
        Some(url) => cmd.env("STRATO_DATABASE", url),
        None => cmd.env_remove("STRATO_DATABASE"),
    };
    cmd
}

/// The PostgreSQL server the tests may use (`STRATO_TEST_POSTGRES`, a URL without a
/// database, e.g. `postgres://strato:PASSWORD@127.0.0.1:5432`; `scripts/postgres` starts one).
pub fn postgres_server() -> Option<String> {
    std::env::var("STRATO_TEST_POSTGRES").ok().filter(|s| !s.is_empty())
}

/// With `STRATO_TEST_BACKEND=postgres`, every test cloud's control plane runs on a PostgreSQL
/// database of its own on `postgres_server()`, made here on first use (its URL kept in the
/// data dir, so a restarted server finds it again) and dropped with the cloud. Otherwise the
/// SQLite file in the data dir, as in production by default.
pub fn test_database(dir: &Path) -> Option<String> {
    if std::env::var("STRATO_TEST_BACKEND").ok().as_deref() != Some("postgres") {
        return None;
    }
    let file = dir.join("test-database");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    let url = new_postgres_database();
    std::fs::write(&file, &url).expect("writing the test database's URL");
    Some(url)
}

/// Makes an empty database on `postgres_server()` and returns its URL (drop it with
/// `drop_postgres_database`).
pub fn new_postgres_database() -> String {
    let server =
        postgres_server().expect("STRATO_TEST_POSTGRES is not set: scripts/test starts PostgreSQL and sets it");
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!("strato_test_{}_{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let server = server.trim_end_matches('/');
    psql(&format!("{server}/postgres"), &format!("CREATE DATABASE {name}"));
    format!("{server}/{name}")
}

/// Drops a database `new_postgres_database` made; a failure is reported, not a test failure
/// (it runs at cleanup, often in a drop).
pub fn drop_postgres_database(url: &str) {
    let Some((server, name)) = url.rsplit_once('/') else { return };
    if name.starts_with("strato_test_") {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let out = Command::new("psql").args(["-X", "-q", "-d", &format!("{server}/postgres"), "-c", &sql]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("could not drop test database {name}: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("could not run psql to drop {name}: {e}"),
        }
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .output()
        .expect("running psql (postgresql-client)");
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Drops the database `test_database` made for this data dir, if any.
pub fn drop_test_database(dir: &Path) {
    if let Ok(url) = std::fs::read_to_string(dir.join("test-database")) {
        drop_postgres_database(&url);
    }
}

/// Starts `strato serve` (a command made by `strato(dir)` with its arguments) and waits
/// for the endpoint it prints; its stdout is drained from then on.
pub fn spawn_serve(cmd: Command) -> (Child, String) {
    let (child, endpoint, _) = spawn_serve_with_agent_api(cmd);
    (child, endpoint)
}

/// `spawn_serve`, also returning the TLS agent API's `https://ADDR` when the server was
/// given `--agent-listen`.
pub fn spawn_serve_with_agent_api(mut cmd: Command) -> (Child, String, Option<String>) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("starting strato serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let (mut endpoint, mut agent_api) = (None, None);
    for line in lines.by_ref() {
        let line = line.expect("reading strato output");
        if let Some(rest) = line.strip_prefix("Agents on other machines: ") {
            agent_api = rest.split_whitespace().next().map(str::to_owned);
        }
        if let Some(rest) = line.strip_prefix("Strato is serving the EC2 API at ") {
            endpoint = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, endpoint.expect("strato serve did not print its endpoint"), agent_api)
}

/// The public pool of a test data dir: its own /16 of 127.64.0.0/10 (distinct low 22 bits,
/// so clouds running side by side never share a transit address), kept in the data dir so a
/// restarted server gets the same one.
pub fn public_pool(dir: &Path) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let file = dir.join("test-public-pool");
    if let Ok(p) = std::fs::read_to_string(&file) {
        return p;
    }
    let n = (std::process::id() + NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)) % 64;
    let pool = format!("127.{}.0.0/16", 64 + n);
    std::fs::write(&file, &pool).expect("writing the test pool");
    pool
}

impl Cloud {
    /// A server whose instances all boot cold (launch snapshots off, so that which path a
    /// launch takes never depends on timing); `start_with_launch_snapshots` for the others.
    pub fn start() -> Cloud {
        let dir = tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir");
        Self::start_in(dir)
    }

    pub fn start_with_launch_snapshots() -> Cloud {
        let dir = tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir");
        Self::start_in_with(dir, true, &[])
    }

    /// Starts a server on an existing data dir (for restart tests).
    pub fn start_in(dir: tempfile::TempDir) -> Cloud {
        Self::start_in_with(dir, false, &[])
    }

    /// `start`, with these environment variables set for `strato serve` (its options).
    pub fn start_with_env(env: &[(&str, &str)]) -> Cloud {
        let dir = tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir");
        Self::start_in_with(dir, false, env)
    }

    fn start_in_with(dir: tempfile::TempDir, launch_snapshots: bool, env: &[(&str, &str)]) -> Cloud {
        let pool = public_pool(dir.path());
        let mut cmd = strato(dir.path());
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("STRATO_LAUNCH_SNAPSHOTS", if launch_snapshots { "on" } else { "off" })
            .env("STRATO_PUBLIC_POOL", pool)
            .envs(env.iter().copied());
        let (child, endpoint) = spawn_serve(cmd);
        let addr = endpoint.trim_start_matches("http://").to_owned();
        Cloud { child: Some(child), sim: None, sim_hosts: None, dir, endpoint, addr, launch_snapshots }
    }

    /// The control plane and API in this process with the simulated agent (no VMs), for
    /// fast control-plane tests through the real AWS CLI: one simulated host serving every
    /// zone with this machine's capacity.
    pub fn start_simulated() -> Cloud {
        Self::start_simulated_hosts(&[], strato::control::hosts::HOST_TIMEOUT)
    }

    /// Like `start_simulated`, with these simulated hosts instead (`SimHost`; none: one host
    /// serving every zone), a host being down once its heartbeats are `host_timeout` old.
    /// `stop_host(n)` stops the n-th host's agent and heartbeats, as if the machine died.
    pub fn start_simulated_hosts(hosts: &[SimHost], host_timeout: Duration) -> Cloud {
        Self::start_simulated_region(hosts, host_timeout, "local-1")
    }

    /// `start_simulated` in another region than `local-1` (clients that know only AWS's
    /// region names, such as Libcloud, need one of those).
    pub fn start_simulated_in(region: &str) -> Cloud {
        Self::start_simulated_region(&[], strato::control::hosts::HOST_TIMEOUT, region)
    }

    fn start_simulated_region(hosts: &[SimHost], host_timeout: Duration, region: &str) -> Cloud {
        let hosts = hosts.to_vec();
        let region = region.to_owned();
        // The in-process server's warnings and errors (an InternalError's cause among them),
        // printed with the test's own output: shown when it fails.
        let _ = tracing_subscriber::fmt().with_env_filter("warn").with_ansi(false).with_test_writer().try_init();
        let dir = tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir");
        let data = dir.path().to_owned();
        let database = test_database(&data);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (kill_tx, mut kill_rx) = tokio::sync::mpsc::unbounded_channel::<HostCommand>();
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let mut control =
                    strato::server::open_control(&data, database.as_deref(), &region, None).await.expect("control");
                control.set_host_timeout(host_timeout).await.expect("host timeout");
                let control = std::sync::Arc::new(control);
                strato::server::ensure_admin(&control).await.expect("admin");
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("addr");
                {
                    let mut tx = control.store().begin_write().await.expect("tx");
                    strato::store::set_meta(tx.conn(), "endpoint", &format!("http://{addr}")).await.expect("meta");
                    tx.commit().await.expect("commit");
                }
                strato::server::write_aws_config(&control, &data).await.expect("aws-config");
                let _ = strato::server::build_and_register(&control, &cache_dir(), strato::image::Kind::Minimal, false)
                    .await;
                let mut agents = Vec::new();
                if hosts.is_empty() {
                    let agent = strato::agent::sim::SimAgent::new(control.clone()).await.expect("simulated host");
                    agents.push(tokio::spawn(agent.run()).abort_handle());
                }
                for (n, h) in hosts.iter().enumerate() {
                    agents.push(start_sim_host(control.clone(), n, *h).await);
                }
                // The host monitor, as an API server that is not itself a host.
                tokio::spawn(strato::control::hosts::monitor(control.clone(), strato::ids::HostId::generate()));
                // Simulated hosts die (their tasks end) and arrive; every task ends with the
                // runtime, when the server stops.
                let hosts_control = control.clone();
                tokio::spawn(async move {
                    while let Some(cmd) = kill_rx.recv().await {
                        match cmd {
                            HostCommand::Stop(n) => {
                                if let Some(h) = agents.get(n) {
                                    h.abort();
                                }
                            }
                            HostCommand::Add(h, done) => {
                                agents.push(start_sim_host(hosts_control.clone(), agents.len(), h).await);
                                let _ = done.send(());
                            }
                        }
                    }
                });
                addr_tx.send(addr).expect("send addr");
                let state = std::sync::Arc::new(strato::api::ApiState { control });
                strato::api::serve(listener, state, async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("serve");
            });
        });
        let addr = addr_rx.recv().expect("in-process server started").to_string();
        Cloud {
            child: None,
            sim: Some((stop_tx, thread)),
            sim_hosts: Some(kill_tx),
            endpoint: format!("http://{addr}"),
            addr,
            dir,
            launch_snapshots: false,
        }
    }

    /// Stops the n-th simulated host (of `start_simulated_hosts`, then `add_host`): its
    /// agent and heartbeats, as if the machine died.
    pub fn stop_host(&self, n: usize) {
        self.sim_hosts
            .as_ref()
            .expect("a cloud with simulated hosts")
            .send(HostCommand::Stop(n))
            .expect("the cloud runs");
    }

    /// Adds a simulated host (registered when this returns).
    pub fn add_host(&self, h: SimHost) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.sim_hosts
            .as_ref()
            .expect("a cloud with simulated hosts")
            .send(HostCommand::Add(h, tx))
            .expect("the cloud runs");
        rx.recv().expect("host added");
    }

    /// Kills the server at once (SIGKILL, as a crash would); VMs keep running.
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same data dir (after `crash`).
    pub fn restart(&mut self) {
        let dir = std::mem::replace(
            &mut self.dir,
            tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir"),
        );
        let mut fresh = Cloud::start_in_with(dir, self.launch_snapshots, &[]);
        self.child = fresh.child.take();
        self.sim = fresh.sim.take();
        self.endpoint = fresh.endpoint.clone();
        self.addr = fresh.addr.clone();
        std::mem::swap(&mut self.dir, &mut fresh.dir);
    }

    /// Stops the server and hands back its data dir.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::Builder::new().prefix("strato-test-").tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    fn kill(&mut self) {
        if let Some((stop, thread)) = self.sim.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        if let Some(mut c) = self.child.take() {
            // SIGTERM first for a clean shutdown; the child is ours, by PID.
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            for _ in 0..50 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("aws-config")
    }

    /// Runs `strato account create NAME` on this data dir; returns the profile name.
    pub fn create_account(&self, name: &str, read_only: bool) -> String {
        let mut cmd = strato(self.dir.path());
        cmd.args(["account", "create", name]);
        if read_only {
            cmd.arg("--read-only");
        }
        let out = cmd.output().expect("strato account create");
        assert!(out.status.success(), "account create failed: {}", String::from_utf8_lossy(&out.stderr));
        name.to_owned()
    }

    /// The `aws` CLI with a profile of this cloud.
    pub fn aws_as(&self, profile: &str, args: &[&str]) -> Output {
        Command::new(venv().join("bin/aws"))
            .args(args)
            .env("AWS_CONFIG_FILE", self.config_file())
            .env("AWS_PROFILE", profile)
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_ENDPOINT_URL")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env("AWS_PAGER", "")
            .output()
            .expect("running aws")
    }

    /// Runs `aws ... --output json` as the admin and returns the parsed answer.
    pub fn aws(&self, args: &[&str]) -> Value {
        self.aws_json_as("strato", args)
    }

    pub fn aws_json_as(&self, profile: &str, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--output", "json"]);
        let out = self.aws_as(profile, &a);
        assert!(out.status.success(), "aws {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        if out.stdout.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).expect("aws printed JSON")
    }

    /// Runs an `aws` call that must fail; returns the EC2 error code it printed.
    pub fn aws_err(&self, args: &[&str]) -> String {
        self.aws_err_as("strato", args)
    }

    pub fn aws_err_as(&self, profile: &str, args: &[&str]) -> String {
        let out = self.aws_as(profile, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "aws {} should have failed", args.join(" "));
        // "An error occurred (InvalidGroup.NotFound) when calling ..."
        stderr
            .split_once("An error occurred (")
            .and_then(|(_, r)| r.split_once(')'))
            .map(|(code, _)| code.to_owned())
            .unwrap_or_else(|| panic!("no EC2 error code in: {stderr}"))
    }

    /// Runs a boto3 script from tests/py with this cloud's endpoint and the admin profile.
    pub fn python(&self, script: &str, args: &[&str]) {
        self.python_env(script, args, &[]);
    }

    /// `python` with more environment variables.
    pub fn python_env(&self, script: &str, args: &[&str], env: &[(&str, &str)]) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py").join(script);
        let out = Command::new(venv().join("bin/python"))
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .env("AWS_CONFIG_FILE", self.config_file())
            .env("AWS_PROFILE", "strato")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("STRATO_ENDPOINT", &self.endpoint)
            .env("STRATO_BIN", strato_bin())
            .env("STRATO_DATA_DIR", self.dir.path())
            .env("STRATO_DATABASE", test_database(self.dir.path()).unwrap_or_default())
            .output()
            .expect("running python");
        assert!(
            out.status.success(),
            "{script} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The id of Strato's minimal image, as the admin sees it.
    pub fn minimal_ami(&self) -> String {
        let images = self.aws(&["ec2", "describe-images", "--filters", "Name=name,Values=strato-minimal*"]);
        images["Images"][0]["ImageId"].as_str().expect("the minimal image is registered").to_owned()
    }

    /// Admin credentials, read from the aws-config file.
    pub fn admin_keys(&self) -> (String, String) {
        let text = std::fs::read_to_string(self.config_file()).expect("aws-config");
        let section = text.split("[profile strato]").nth(1).expect("strato profile");
        let get = |k: &str| {
            section.lines().find_map(|l| l.strip_prefix(&format!("{k} = "))).map(str::to_owned).expect("key in profile")
        };
        (get("aws_access_key_id"), get("aws_secret_access_key"))
    }

    /// `strato bill --account ACCOUNT --json` on this data dir.
    pub fn bill(&self, account: &str) -> Value {
        let out = strato(self.dir.path())
            .args(["bill", "--account", account, "--json"])
            .env("STRATO_LOG", "warn")
            .output()
            .expect("strato bill");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("bill JSON")
    }

    /// Sends raw bytes as one HTTP/1.1 request and returns (status, body).
    pub fn raw(&self, request: &[u8]) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        s.write_all(request).expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// A signed POST of `body`, with `Connection: close`; returns (status, body).
    pub fn signed_post(&self, body: &str) -> (u16, String) {
        let (key, secret) = self.admin_keys();
        let signer =
            strato::api::sigv4::Signer { access_key: &key, secret: &secret, region: "local-1", service: "ec2" };
        let (date, auth) = signer.sign_form_post(&self.addr, body.as_bytes(), chrono::Utc::now());
        let req = format!(
            "POST / HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\r\nx-amz-date: {date}\r\nauthorization: {auth}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.raw(req.as_bytes())
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.kill();
        // VMs are daemonized QEMUs and networks outlive the server by design: `strato down`
        // ends the VMs this test started (by pid) and removes its namespaces and rules.
        let _ = strato(self.dir.path()).arg("down").stdout(Stdio::null()).status();
        drop_test_database(self.dir.path());
    }
}

/// The `<Code>` of an EC2 error document.
pub fn error_code(body: &str) -> &str {
    body.split_once("<Code>").and_then(|(_, r)| r.split_once("</Code>")).map(|(c, _)| c).unwrap_or("")
}

/// Creates a key pair for `profile` and writes its private key (mode 0600) into the data dir.
pub fn key_file(cloud: &Cloud, profile: &str, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let k = cloud.aws_json_as(profile, &["ec2", "create-key-pair", "--key-name", name]);
    let path = cloud.dir.path().join(format!("{name}.pem"));
    std::fs::write(&path, k["KeyMaterial"].as_str().unwrap_or_default()).expect("writing the key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod the key");
    path
}

/// Opens port 22 of the caller's default security group to the host (127.0.0.0/8).
pub fn open_ssh(cloud: &Cloud) {
    cloud.aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-name",
        "default",
        "--protocol",
        "tcp",
        "--port",
        "22",
        "--cidr",
        "127.0.0.0/8",
    ]);
}

/// Runs `command` in the instance over SSH at its public address, retrying (for up to
/// 120 s) until the address exists and SSH works; its stdout.
pub fn ssh_retry(cloud: &Cloud, key: &Path, id: &str, command: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let i = cloud.aws(&["ec2", "describe-instances", "--instance-ids", id]);
        let ip = i["Reservations"][0]["Instances"][0]["PublicIpAddress"].as_str().unwrap_or_default().to_owned();
        if !ip.is_empty() {
            if let Some(out) = ssh(key, &ip, command) {
                return out;
            }
        }
        if start.elapsed() > std::time::Duration::from_secs(120) {
            let console = std::fs::read_to_string(cloud.dir.path().join("instances").join(id).join("console.log"));
            panic!("no SSH to {id}: {}\n{}", console.unwrap_or_default(), vm_interrupt_state(cloud, id));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// What QEMU says of an instance's vCPUs and interrupt controllers (registers, each vCPU's
/// local APIC, the I/O APIC and PICs), for a test that gave up waiting on its guest: a hung
/// guest's state, which its console does not show (a vCPU halted with interrupts blocked, a
/// local APIC with a vector left in service). Empty if its QEMU is gone.
pub fn vm_interrupt_state(cloud: &Cloud, id: &str) -> String {
    let sock = cloud.dir.path().join("instances").join(id).join("qmp.sock");
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return String::new();
    };
    rt.block_on(async {
        let Ok(mut q) = strato::hypervisor::qmp::Qmp::connect(&sock).await else {
            return String::new();
        };
        let mut out = String::new();
        for c in ["info registers -a", "info lapic 0", "info lapic 1", "info pic"] {
            let line = serde_json::json!({ "command-line": c });
            match q.execute("human-monitor-command", Some(line)).await {
                Ok(v) => out += &format!("== {c}\n{}\n", v.as_str().unwrap_or_default()),
                Err(e) => out += &format!("== {c}: {e}\n"),
            }
        }
        out
    })
}

/// Runs a command in a guest over SSH as root at `ip`; `None` if SSH or the command fails.
pub fn ssh(key: &Path, ip: &str, command: &str) -> Option<String> {
    let out = Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"])
        .args(["-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", &format!("root@{ip}"), command])
        .output()
        .expect("ssh (openssh-client)");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// User data that serves `web HOSTNAME` on port 80 with busybox httpd (the minimal image runs
/// user data at every boot).
pub const WEB_USER_DATA: &str =
    "#!/bin/sh\nmkdir -p /www\necho \"web $(hostname)\" > /www/index.html\nbusybox httpd -p 80 -h /www\n";

/// GET / from ip:80: the body, if it answered.
pub fn http_get(ip: &str) -> Option<String> {
    let addr: std::net::SocketAddr = format!("{ip}:80").parse().ok()?;
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, body)| body.trim().to_owned())
}

/// Makes the security group `web`, open to port 80 from this machine, with `aws`; its id.
pub fn web_group(aws: impl Fn(&[&str]) -> Value) -> String {
    let g = aws(&["ec2", "create-security-group", "--group-name", "web", "--description", "web"]);
    let g = g["GroupId"].as_str().expect("GroupId").to_owned();
    aws(&[
        "ec2",
        "authorize-security-group-ingress",
        "--group-id",
        &g,
        "--protocol",
        "tcp",
        "--port",
        "80",
        "--cidr",
        "127.0.0.1/32",
    ]);
    g
}

/// `strato --data-dir DIR` run inside a network namespace the test made. With `nsenter
/// --net`, not `ip netns exec`: the latter also gives the process a mount namespace of its
/// own, and the VPC namespaces it makes (bind mounts under /run/netns) would be invisible
/// outside it.
pub fn strato_in_netns(ns: &str, dir: &Path) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .args([strato_bin(), "--data-dir"])
        .arg(dir)
        .env("STRATO_CACHE_DIR", cache_dir())
        .env("STRATO_LOG", "warn")
        .env_remove("STRATO_DATABASE");
    c
}

/// A `strato serve` (data dir `dirs[0]`) and a `strato agent` (`dirs[1]`, run in
/// `agent_netns` if set): on drop, both are ended by pid, then each data dir's VMs and
/// networks (`strato down`), also when the test fails.
pub struct ServeAndAgent {
    pub serve: Child,
    pub agent: Option<Child>,
    pub dirs: Vec<tempfile::TempDir>,
    pub agent_netns: Option<String>,
}

impl Drop for ServeAndAgent {
    fn drop(&mut self) {
        for c in [Some(&mut self.serve), self.agent.as_mut()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (n, d) in self.dirs.iter().enumerate() {
            let mut down = match (&self.agent_netns, n) {
                (Some(ns), 1) => strato_in_netns(ns, d.path()),
                _ => strato(d.path()),
            };
            let _ = down.arg("down").output();
        }
    }
}

/// The AWS CLI as the admin of the server at `endpoint` whose `aws-config` is `config`;
/// its JSON answer (fails the test on an error).
pub fn aws_at(endpoint: &str, config: &Path, args: &[&str]) -> Value {
    let out = Command::new(venv().join("bin/aws"))
        .args(args)
        .args(["--output", "json", "--endpoint-url", endpoint])
        .env("AWS_CONFIG_FILE", config)
        .env("AWS_PROFILE", "strato")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .expect("aws");
    assert!(out.status.success(), "aws {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Waits until `ok` holds, checking every 300 ms; fails the test after `limit`.
pub fn eventually_within(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Entries under `root` (not following links) that a group or other user may read, write or
/// enter, with their modes.
pub fn readable_by_others(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if mode & 0o077 != 0 {
            out.push(format!("{} {mode:o}", p.display()));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}
