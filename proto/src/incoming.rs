//! Connections a gRPC server accepts, with `TCP_NODELAY` set.
//!
//! tonic sets it only on listeners it binds itself; orch binds its own (to fail by name
//! before a daemon starts, and to hand tests port 0). Without it, a response's trailers
//! wait behind Nagle's algorithm for the client's delayed ACK: every unary call took
//! ~43 ms more than its work, and streamed messages (desired sets, logs) waited alike.

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};

/// The accepted connections of `listener`, each with `TCP_NODELAY`; for
/// `serve_with_incoming`.
pub fn nodelay(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            // Only latency is at stake: a connection without it still works.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "setsockopt(TCP_NODELAY) on an accepted connection");
            }
        })
    })
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut incoming = Box::pin(super::nodelay(listener));
        let _client = tokio::net::TcpStream::connect(address).await.expect("connect");
        let accepted = tokio_stream::StreamExt::next(&mut incoming).await.expect("a connection").expect("accepted");
        assert!(accepted.nodelay().expect("getsockopt"), "TCP_NODELAY is set");
    }
}
