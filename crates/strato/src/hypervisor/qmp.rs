//! A small typed client for QEMU's Machine Protocol over its Unix socket: the greeting,
//! `qmp_capabilities`, then one command at a time; events that arrive in between are kept
//! for whoever wants them.

use std::os::fd::{AsRawFd, RawFd};
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
        self.writer.write_all(message(command, arguments).as_bytes()).await?;
        self.answer(command).await
    }

    /// Hands QEMU an open file (`getfd`, the descriptor passed with the command as
    /// `SCM_RIGHTS`) under `name`, for a later command to use as `fd:NAME` (migration
    /// to or from a file with no shell or helper process in between). QEMU keeps its own
    /// copy: the caller's file may close at once.
    pub async fn getfd(&mut self, name: &str, file: &impl AsRawFd) -> Result<(), QmpError> {
        self.with_fd("getfd", json!({ "fdname": name }), file).await.map(drop)
    }

    /// Hands QEMU an open file in a new fd set (`add-fd`); returns the set's id, for a
    /// later command to open `/dev/fdset/ID` (a VM that runs as its own user opens no file
    /// by path after its start: the agent opens it and hands the descriptor over).
    pub async fn add_fd(&mut self, file: &impl AsRawFd) -> Result<u64, QmpError> {
        let answer = self.with_fd("add-fd", json!({}), file).await?;
        answer["fdset-id"].as_u64().ok_or_else(|| QmpError::Command {
            command: "add-fd".into(),
            class: "GenericError".into(),
            desc: format!("no fdset-id in {answer}"),
        })
    }

    /// `command` with `file`'s descriptor attached.
    async fn with_fd(&mut self, command: &str, arguments: Value, file: &impl AsRawFd) -> Result<Value, QmpError> {
        let text = message(command, Some(arguments));
        let fd = file.as_raw_fd();
        let stream: &UnixStream = self.writer.as_ref();
        let sock = stream.as_raw_fd();
        // The whole line goes with the descriptor in one sendmsg: a short write would split
        // the command from it, so anything short is an error.
        let sent = stream.async_io(tokio::io::Interest::WRITABLE, || send_with_fd(sock, text.as_bytes(), fd)).await?;
        if sent != text.len() {
            return Err(QmpError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "a command with a descriptor sent in part",
            )));
        }
        self.answer(command).await
    }

    async fn answer(&mut self, command: &str) -> Result<Value, QmpError> {
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

fn message(command: &str, arguments: Option<Value>) -> String {
    let mut msg = json!({ "execute": command });
    if let Some(a) = arguments {
        msg["arguments"] = a;
    }
    let mut text = msg.to_string();
    text.push('\n');
    text
}

/// One `sendmsg` of `data` with `fd` attached as `SCM_RIGHTS`; the bytes sent.
fn send_with_fd(sock: RawFd, data: &[u8], fd: RawFd) -> std::io::Result<usize> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    let fd_len = std::mem::size_of::<RawFd>() as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
    // u64s keep the control buffer aligned as a cmsghdr needs.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control holds CMSG_SPACE(sizeof fd) bytes, room for one header and the fd.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(std::io::Error::other("no room for the descriptor"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_len) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: msg is filled in as above; sock is an open socket.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    /// One `recvmsg` on `sock`: the bytes and the descriptor that came with them.
    fn receive_with_fd(sock: RawFd) -> (Vec<u8>, Option<std::fs::File>) {
        use std::os::fd::FromRawFd;
        let mut data = vec![0u8; 256];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        let mut control = vec![0u64; 8];
        // SAFETY: an all-zero msghdr is valid; its buffers outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = (control.len() * 8) as _;
        // SAFETY: msg is filled in as above.
        let n = unsafe { libc::recvmsg(sock, &mut msg, 0) };
        assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
        data.truncate(n as usize);
        // SAFETY: the kernel filled msg_control; a SCM_RIGHTS message carries one fd here.
        let file = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (!cmsg.is_null() && (*cmsg).cmsg_type == libc::SCM_RIGHTS)
                .then(|| std::fs::File::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>())))
        };
        (data, file)
    }

    #[test]
    fn a_descriptor_goes_with_its_command() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let mut file = tempfile::tempfile().expect("temp file");
        file.write_all(b"device state").expect("write");
        let text = message("getfd", Some(json!({ "fdname": "state" })));
        let sent = send_with_fd(a.as_raw_fd(), text.as_bytes(), file.as_raw_fd()).expect("sendmsg");
        assert_eq!(sent, text.len());
        drop(file);
        let (data, got) = receive_with_fd(b.as_raw_fd());
        assert_eq!(data, text.as_bytes());
        let command: Value = serde_json::from_slice(&data).expect("JSON");
        assert_eq!(command, json!({"execute": "getfd", "arguments": {"fdname": "state"}}));
        assert!(data.ends_with(b"}\n"), "one line");
        // The same open file, though the sender's descriptor is closed.
        let mut got = got.expect("a descriptor came");
        got.rewind().expect("seek");
        let mut back = String::new();
        got.read_to_string(&mut back).expect("read");
        assert_eq!(back, "device state");
    }

    #[test]
    fn a_closed_socket_is_an_error_not_a_signal() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        drop(b);
        let file = tempfile::tempfile().expect("temp file");
        let e = send_with_fd(a.as_raw_fd(), b"x", file.as_raw_fd()).expect_err("the peer is gone");
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
