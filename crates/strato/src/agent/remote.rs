//! Agents on other machines: the agent API (`POST /strato-agent/v1/METHOD`, JSON, on the EC2
//! API's listener) and `RemoteLink`, the `Link` an agent started by `strato agent` uses.
//!
//! A host joins with a join token (`strato host token`; good once, until it expires) and
//! gets a credential of its own; every other call carries `Authorization: Bearer
//! HOST_ID:CREDENTIAL`. The control plane checks each report against the caller's duties: a
//! host reports only on the instances placed on it and the volumes and snapshots that are its
//! work, sets only the instance flags agents set, and names no files (the control plane
//! finds a snapshot's file itself); it reads only the volumes, modifications and snapshots
//! that are its work (the region's worker reads every snapshot: it removes the files of
//! deleted ones). Plain HTTP is for a control plane on loopback; elsewhere the agent
//! speaks TLS to `serve --agent-listen`, pinning the certificate named in its join token
//! (`agent::tls`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::link::Link;
use crate::catalog::Catalogue;
use crate::control::hosts::{Duties, HostSpec};
use crate::control::instance_state::{Event, InstanceState};
use crate::control::instances::Instance;
use crate::control::model::Image;
use crate::control::snapshots::Snapshot;
use crate::control::volumes::{Modification, Volume};
use crate::control::Control;
use crate::ids::{HostId, InstanceId, SnapshotId, VolumeId};
use crate::net::rules::VpcView;

/// The path prefix of the agent API.
pub const PREFIX: &str = "/strato-agent/v1/";

/// The flags of an instance an agent may set.
const AGENT_FLAGS: &[&str] = &["reboot_requested", "status_ok"];

/// Why a call was refused: the HTTP status and a message.
#[derive(Debug)]
pub struct Refused(pub u16, pub String);

impl<E: std::fmt::Display> From<E> for Refused {
    fn from(e: E) -> Refused {
        Refused(500, format!("{e:#}"))
    }
}

fn forbidden(what: String) -> Refused {
    Refused(403, what)
}

fn arg<T: for<'de> Deserialize<'de>>(body: &Value, name: &str) -> Result<T, Refused> {
    serde_json::from_value(body.get(name).cloned().unwrap_or(Value::Null))
        .map_err(|e| Refused(400, format!("argument {name}: {e}")))
}

/// Serves one call of the agent API: `authorization` is the request's header, if any.
pub async fn serve_call(
    control: &Arc<Control>,
    authorization: Option<&str>,
    method: &str,
    body: &[u8],
) -> Result<Value, Refused> {
    let body: Value = serde_json::from_slice(body).map_err(|e| Refused(400, format!("the body is not JSON: {e}")))?;
    if method == "join" {
        let token: String = arg(&body, "token")?;
        let spec: HostSpec = arg(&body, "spec")?;
        return match control.join_host(&token, &spec).await? {
            Some((host, credential)) => Ok(json!({"host_id": host, "credential": credential})),
            None => Err(Refused(401, "the join token is unknown, used or expired".into())),
        };
    }
    let host = authenticate(control, authorization).await?;
    let c = control.as_ref();
    let duties = || async { Control::duties(c, &host).await.map_err(Refused::from) };
    let out = match method {
        "register" => {
            let spec: HostSpec = arg(&body, "spec")?;
            control.register_host(Some(host.clone()), &spec).await?;
            json!({
                "region": control.region.name,
                "catalogue": std::fs::read_to_string(control.data_dir.join("instance-types.toml"))?,
                "heartbeat_ms": control.heartbeat_interval().as_millis() as u64,
            })
        }
        "heartbeat" => to(Control::heartbeat(c, &host).await?),
        "duties" => to(duties().await?),
        // A host sees the volumes, modifications and snapshots that are its work only.
        "all_volumes" => {
            let d = duties().await?;
            let volumes = Control::all_volumes(c).await?;
            to(volumes
                .into_iter()
                .filter(|v| d.volume(&v.availability_zone, v.instance_id.as_deref()))
                .collect::<Vec<_>>())
        }
        "modifying_volumes" => {
            let d = duties().await?;
            let volumes = Control::all_volumes(c).await?;
            let mods = Control::modifying_volumes(c).await?;
            to(mods
                .into_iter()
                .filter(|m| {
                    volumes.iter().any(|v| {
                        v.id.as_str() == m.volume_id && d.volume(&v.availability_zone, v.instance_id.as_deref())
                    })
                })
                .collect::<Vec<_>>())
        }
        "all_snapshots" => {
            let d = duties().await?;
            let volumes = Control::all_volumes(c).await?;
            let snapshots = Control::all_snapshots(c).await?;
            // The region worker removes the files of deleted snapshots: it needs them all.
            to(snapshots
                .into_iter()
                .filter(|s| d.region_worker || snapshot_is_ours(&d, &volumes, s))
                .collect::<Vec<_>>())
        }
        "image_ids" => to(Control::image_ids(c).await.map_err(|e| Refused(500, e.to_string()))?),
        "image_for_launch" => {
            let id: String = arg(&body, "id")?;
            to(Control::image_for_launch(c, &id).await.map_err(|e| Refused(500, e.to_string()))?)
        }
        "network_views" => {
            // Of the caller's own instances only, as the database has them.
            let ids: Vec<String> = arg(&body, "instance_ids")?;
            let mine: Vec<Instance> =
                duties().await?.instances.into_iter().filter(|i| ids.iter().any(|x| x == i.id.as_str())).collect();
            to(Control::network_views(c, &host, &mine).await?)
        }
        "apply" => {
            let id: InstanceId = arg(&body, "id")?;
            own_instance(&duties().await?, &id)?;
            let reason: Option<(String, String)> = arg(&body, "reason")?;
            let state = Control::apply(
                c,
                &id,
                arg(&body, "generation")?,
                arg(&body, "event")?,
                reason.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
            )
            .await?;
            to(state)
        }
        "set_instance_flag" => {
            let id: InstanceId = arg(&body, "id")?;
            own_instance(&duties().await?, &id)?;
            let flag: String = arg(&body, "flag")?;
            if !AGENT_FLAGS.contains(&flag.as_str()) {
                return Err(forbidden(format!("an agent does not set {flag}")));
            }
            to(Control::set_instance_flag(c, &id, &flag, arg(&body, "value")?).await?)
        }
        "volume_created" | "volume_deleted" | "volume_attached" | "volume_detached" | "volume_modified" => {
            let id: String = arg(&body, "id")?;
            let volumes = Control::all_volumes(c).await?;
            let v =
                volumes.iter().find(|v| v.id.as_str() == id).ok_or_else(|| Refused(404, format!("no volume {id}")))?;
            if !duties().await?.volume(&v.availability_zone, v.instance_id.as_deref()) {
                return Err(forbidden(format!("volume {id} is not this host's work")));
            }
            let vid = v.id.clone();
            match method {
                "volume_created" => Control::volume_created(c, &vid).await?,
                "volume_deleted" => Control::volume_deleted(c, &vid).await?,
                "volume_attached" => Control::volume_attached(c, &vid).await?,
                "volume_detached" => Control::volume_detached(c, &vid).await?,
                _ => Control::volume_modified(c, vid.as_str(), arg(&body, "ok")?).await?,
            }
            Value::Null
        }
        "snapshot_done" | "image_snapshot_done" => {
            let id: SnapshotId = arg(&body, "id")?;
            let snapshots = Control::all_snapshots(c).await?;
            let s = snapshots.iter().find(|s| s.id == id).ok_or_else(|| Refused(404, format!("no snapshot {id}")))?;
            let volumes = Control::all_volumes(c).await?;
            if !snapshot_is_ours(&duties().await?, &volumes, s) {
                return Err(forbidden(format!("snapshot {id} is not this host's work")));
            }
            let ok: bool = arg(&body, "ok")?;
            if method == "snapshot_done" {
                Control::snapshot_done(c, &id, ok).await?;
            } else {
                let file = control.snapshots_dir().join(format!("{id}.qcow2"));
                Control::image_snapshot_done(c, &id, ok.then_some(file.as_path())).await?;
            }
            Value::Null
        }
        other => return Err(Refused(404, format!("no agent call {other}"))),
    };
    Ok(out)
}

/// A snapshot is the work of the host whose work its volume is; a copy, or one whose volume
/// is gone, the region worker's.
fn snapshot_is_ours(d: &Duties, volumes: &[Volume], s: &Snapshot) -> bool {
    match volumes.iter().find(|v| v.id.as_str() == s.volume_id) {
        Some(v) if s.source_snapshot.is_none() => d.volume(&v.availability_zone, v.instance_id.as_deref()),
        _ => d.region_worker,
    }
}

fn to<T: Serialize>(v: T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn own_instance(d: &Duties, id: &InstanceId) -> Result<(), Refused> {
    if d.instances.iter().any(|i| &i.id == id) {
        Ok(())
    } else {
        Err(forbidden(format!("instance {id} is not placed on this host")))
    }
}

async fn authenticate(control: &Control, authorization: Option<&str>) -> Result<HostId, Refused> {
    let unauthorized = || Refused(401, "the call needs Authorization: Bearer HOST_ID:CREDENTIAL".into());
    let bearer = authorization.and_then(|a| a.strip_prefix("Bearer ")).ok_or_else(unauthorized)?;
    let (host, credential) = bearer.split_once(':').ok_or_else(unauthorized)?;
    let host = HostId::parse(host).map_err(|_| unauthorized())?;
    if control.host_credential_ok(&host, credential).await? {
        Ok(host)
    } else {
        Err(Refused(401, "unknown host or wrong credential".into()))
    }
}

/// What `strato agent` keeps in `DATA_DIR/agent.json` (mode 0600) after it joined.
#[derive(Serialize, Deserialize)]
pub struct Joined {
    pub control_plane: String,
    pub host_id: HostId,
    pub credential: String,
    /// The control plane's certificate SHA-256 (from the join token), for https.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// The control plane over the agent API, for an agent on another machine.
pub struct RemoteLink {
    addr: Endpoint,
    bearer: String,
    catalogue: Catalogue,
    region: String,
    storage_dir: PathBuf,
    poll: std::time::Duration,
    heartbeat: std::time::Duration,
}

/// Where the control plane's agent API is: `http://IP:PORT` (loopback only: plain HTTP) or
/// `https://IP:PORT` (TLS, the certificate pinned by its SHA-256, from the join token).
#[derive(Clone)]
pub struct Endpoint {
    addr: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Endpoint {
    pub fn parse(url: &str, fingerprint: Option<&str>) -> anyhow::Result<Endpoint> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            anyhow::bail!("the control plane URL is http://IP:PORT (loopback) or https://IP:PORT");
        };
        let addr: std::net::SocketAddr =
            rest.trim_end_matches('/').parse().context("the control plane URL is http(s)://IP:PORT")?;
        if !tls {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "plain HTTP to the control plane is for loopback only: use https://IP:PORT (its `serve --agent-listen`)"
            );
            return Ok(Endpoint { addr, tls: None });
        }
        let pin = fingerprint
            .context("an https control plane needs a join token that carries its certificate's fingerprint")?;
        Ok(Endpoint { addr, tls: Some(tokio_rustls::TlsConnector::from(super::tls::client_config(pin)?)) })
    }
}

/// The certificate fingerprint inside a join token (`sjt-SECRET.FINGERPRINT`), if any.
pub fn token_fingerprint(token: &str) -> Option<&str> {
    token.split_once('.').map(|(_, fp)| fp)
}

/// One call of the agent API.
pub async fn call(to: &Endpoint, bearer: Option<&str>, method: &str, body: &Value) -> anyhow::Result<Value> {
    let addr = to.addr;
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    let raw = match &to.tls {
        None => exchange(tcp, addr, bearer, method, body).await?,
        Some(connector) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let tls = connector.connect(name, tcp).await.with_context(|| format!("TLS with {addr}"))?;
            exchange(tls, addr, bearer, method, body).await?
        }
    };
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("a malformed answer")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no status")?;
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    anyhow::ensure!(status == 200, "{method}: {status} {}", value.get("error").and_then(Value::as_str).unwrap_or(body));
    Ok(value)
}

/// Writes one request and reads the whole answer (the server closes the connection).
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    addr: std::net::SocketAddr,
    bearer: Option<&str>,
    method: &str,
    body: &Value,
) -> anyhow::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::to_vec(body)?;
    let auth = bearer.map(|b| format!("authorization: Bearer {b}\r\n")).unwrap_or_default();
    let head = format!(
        "POST {PREFIX}{method} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after a complete answer: keep what came.
    match stream.read_to_end(&mut raw).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(raw)
}

impl RemoteLink {
    /// Registers the joined host again (its capacity, a heartbeat) and reads the region and
    /// catalogue.
    pub async fn connect(joined: &Joined, spec: &HostSpec, storage_dir: &Path) -> anyhow::Result<RemoteLink> {
        let addr = Endpoint::parse(&joined.control_plane, joined.fingerprint.as_deref())?;
        let bearer = format!("{}:{}", joined.host_id, joined.credential);
        let hello = call(&addr, Some(&bearer), "register", &json!({"spec": spec})).await?;
        let catalogue = Catalogue::parse(hello["catalogue"].as_str().context("no catalogue")?)?;
        let region = hello["region"].as_str().context("no region")?.to_owned();
        let heartbeat = std::time::Duration::from_millis(hello["heartbeat_ms"].as_u64().context("no heartbeat")?);
        Ok(RemoteLink {
            addr,
            bearer,
            catalogue,
            region,
            storage_dir: storage_dir.to_owned(),
            poll: super::TICK,
            heartbeat,
        })
    }

    async fn call<T: for<'de> Deserialize<'de>>(&self, method: &str, body: Value) -> anyhow::Result<T> {
        let v = call(&self.addr, Some(&self.bearer), method, &body).await?;
        serde_json::from_value(v).with_context(|| format!("the answer to {method}"))
    }

    async fn report(&self, method: &str, body: Value) -> anyhow::Result<()> {
        call(&self.addr, Some(&self.bearer), method, &body).await.map(drop)
    }
}

impl Link for RemoteLink {
    async fn duties(&self, _host: &HostId) -> anyhow::Result<Duties> {
        self.call("duties", json!({})).await
    }
    async fn all_volumes(&self) -> anyhow::Result<Vec<Volume>> {
        self.call("all_volumes", json!({})).await
    }
    async fn modifying_volumes(&self) -> anyhow::Result<Vec<Modification>> {
        self.call("modifying_volumes", json!({})).await
    }
    async fn all_snapshots(&self) -> anyhow::Result<Vec<Snapshot>> {
        self.call("all_snapshots", json!({})).await
    }
    async fn network_views(&self, _host: &HostId, instances: &[Instance]) -> anyhow::Result<Vec<VpcView>> {
        let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
        self.call("network_views", json!({ "instance_ids": ids })).await
    }
    async fn image_ids(&self) -> anyhow::Result<Vec<String>> {
        self.call("image_ids", json!({})).await
    }
    async fn image_for_launch(&self, id: &str) -> anyhow::Result<Option<Image>> {
        self.call("image_for_launch", json!({ "id": id })).await
    }
    fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }
    fn region_name(&self) -> &str {
        &self.region
    }
    async fn heartbeat(&self, _host: &HostId) -> anyhow::Result<()> {
        self.report("heartbeat", json!({})).await
    }
    async fn apply(
        &self,
        id: &InstanceId,
        generation: i64,
        event: Event,
        reason: Option<(&str, &str)>,
    ) -> anyhow::Result<Option<InstanceState>> {
        self.call("apply", json!({"id": id, "generation": generation, "event": event, "reason": reason})).await
    }
    async fn set_instance_flag(&self, id: &InstanceId, flag: &str, value: bool) -> anyhow::Result<()> {
        self.report("set_instance_flag", json!({"id": id, "flag": flag, "value": value})).await
    }
    async fn volume_created(&self, id: &VolumeId) -> anyhow::Result<()> {
        self.report("volume_created", json!({ "id": id })).await
    }
    async fn volume_deleted(&self, id: &VolumeId) -> anyhow::Result<()> {
        self.report("volume_deleted", json!({ "id": id })).await
    }
    async fn volume_attached(&self, id: &VolumeId) -> anyhow::Result<()> {
        self.report("volume_attached", json!({ "id": id })).await
    }
    async fn volume_detached(&self, id: &VolumeId) -> anyhow::Result<()> {
        self.report("volume_detached", json!({ "id": id })).await
    }
    async fn volume_modified(&self, id: &str, ok: bool) -> anyhow::Result<()> {
        self.report("volume_modified", json!({"id": id, "ok": ok})).await
    }
    async fn snapshot_done(&self, id: &SnapshotId, ok: bool) -> anyhow::Result<()> {
        self.report("snapshot_done", json!({"id": id, "ok": ok})).await
    }
    async fn image_snapshot_done(&self, id: &SnapshotId, file: Option<&Path>) -> anyhow::Result<()> {
        // The control plane finds the file itself (in the shared storage dir).
        self.report("image_snapshot_done", json!({"id": id, "ok": file.is_some()})).await
    }
    fn console_file(&self, instance_id: &str) -> PathBuf {
        self.storage_dir.join("consoles").join(format!("{instance_id}.log"))
    }
    fn volumes_dir(&self) -> PathBuf {
        self.storage_dir.join("volumes")
    }
    fn snapshots_dir(&self) -> PathBuf {
        self.storage_dir.join("snapshots")
    }
    fn heartbeat_interval(&self) -> std::time::Duration {
        self.heartbeat
    }
    async fn changed(&self, at_most: std::time::Duration) {
        tokio::time::sleep(at_most.min(self.poll)).await;
    }
}
