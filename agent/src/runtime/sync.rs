//! The sync socket between the agent and a starting container: length-prefixed JSON
//! messages over a Unix socket pair (standard input of the re-exec'd process). Unbuffered, so
//! the shim and the container's init, which share the descriptor across fork, never
//! read each other's bytes.
//!
//! agent → shim: `Config`; with a user namespace, shim → agent: `UsernsCreated` and
//! agent → shim: `IdsMapped`; shim → agent: `InitPid`; init → agent: `Unshared`;
//! agent → init: `Go`; init or the command → agent: `Error`. The agent then reads until
//! end of file: every copy of the socket is closed once the command's `execve` succeeds.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use super::config::InitConfig;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // a handful per container start, serialized at once
pub enum SyncMessage {
    Config(InitConfig),
    UsernsCreated,
    IdsMapped,
    InitPid { pid: i32 },
    Unshared,
    Go,
    Error { message: String, code: i32 },
}

/// Largest message accepted (a config with many layers and env entries fits easily).
const MAX_MESSAGE: usize = 1 << 20;

pub fn send(stream: &mut impl Write, message: &SyncMessage) -> std::io::Result<()> {
    let body = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| std::io::Error::other("sync message too large"))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    stream.write_all(&frame)
}

/// The next message, or `None` at end of file.
pub fn receive(stream: &mut impl Read) -> std::io::Result<Option<SyncMessage>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other(format!("sync message of {len} bytes is too large")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_end_of_file() {
        let mut buffer = Vec::new();
        send(&mut buffer, &SyncMessage::InitPid { pid: 42 }).expect("send");
        send(&mut buffer, &SyncMessage::Error { message: "no".into(), code: 127 }).expect("send");
        let mut reader = buffer.as_slice();
        assert_eq!(receive(&mut reader).expect("read"), Some(SyncMessage::InitPid { pid: 42 }));
        assert_eq!(receive(&mut reader).expect("read"), Some(SyncMessage::Error { message: "no".into(), code: 127 }));
        assert_eq!(receive(&mut reader).expect("read"), None);
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(b"xx");
        assert!(receive(&mut huge.as_slice()).is_err());
        let mut garbage = 3u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(b"{{{");
        assert!(receive(&mut garbage.as_slice()).is_err());
    }
}
