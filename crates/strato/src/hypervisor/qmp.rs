//! A small typed client for QEMU's Machine Protocol over its Unix socket: the greeting,
//! `qmp_capabilities`, then one command at a time; events that arrive in between are kept
//! for whoever wants them.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP I/O")]
    Io(#[from] std::io::Error),
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP answered no JSON: {0}")]
    Json(String),
    #[error("QMP {command} failed: {class}: {desc}")]
    Command { command: String, class: String, desc: String },
    #[error("QMP timed out")]
    Timeout,
}

/// The VM's run state as `query-status` reports it (`running`, `paused`, `shutdown`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    pub status: String,
}

pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    /// Events received while waiting for answers.
    pub events: Vec<Value>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Qmp {
    pub async fn connect(path: &Path) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect { path: path.display().to_string(), source })?;
        let (r, w) = stream.into_split();
        let mut q = Qmp { reader: BufReader::new(r), writer: w, events: Vec::new() };
        let greeting = q.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Json(format!("no greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n =
            tokio::time::timeout(TIMEOUT, self.reader.read_line(&mut line)).await.map_err(|_| QmpError::Timeout)??;
        if n == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Json(line.trim().to_owned()))
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes()).await?;
        loop {
            let v = self.read().await?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    class: e["class"].as_str().unwrap_or("").to_owned(),
                    desc: e["desc"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
    }

    pub async fn query_status(&mut self) -> Result<Status, QmpError> {
        let r = self.execute("query-status", None).await?;
        Ok(Status {
            running: r["running"].as_bool().unwrap_or(false),
            status: r["status"].as_str().unwrap_or("").to_owned(),
        })
    }

    /// Presses the ACPI power button.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Resets the VM (a hard reboot).
    pub async fn system_reset(&mut self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// Ends QEMU at once.
    pub async fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
