//! Sockets made inside a network namespace by a dedicated thread that entered it once
//! (setns affects only the calling thread; a socket stays in the namespace it was made
//! in). The async side asks for sockets over a channel.

use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::sync::mpsc;

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Socket, Type};
use tokio::sync::oneshot;

use super::netns::Netns;
use super::NetError;

type Job = Box<dyn FnOnce() + Send>;

pub struct NsSockets {
    jobs: mpsc::Sender<Job>,
}

impl NsSockets {
    /// Starts the thread; it ends when this value is dropped.
    pub fn start(netns: &Netns) -> Result<NsSockets, NetError> {
        let file = std::fs::File::open(netns.path()).map_err(NetError::io("cannot open", netns.path()))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("netns-sockets".into())
            .spawn(move || {
                let entered = setns(file.as_fd(), CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in queue {
                        job();
                    }
                }
            })
            .map_err(|e| NetError::Thread(format!("cannot start the namespace socket thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NsSockets { jobs }),
            Ok(Err(errno)) => Err(NetError::Syscall { syscall: "setns(CLONE_NEWNET)", errno }),
            Err(_) => Err(NetError::Thread("the namespace socket thread died".into())),
        }
    }

    async fn call<T: Send + 'static>(&self, work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .map_err(|_| std::io::Error::other("the namespace socket thread is gone"))?;
        rx.await.map_err(|_| std::io::Error::other("the namespace socket thread dropped a request"))?
    }

    /// An unconnected TCP socket in the namespace, ready for tokio.
    pub async fn tcp_socket(&self) -> std::io::Result<tokio::net::TcpSocket> {
        let socket = self
            .call(|| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .await?;
        Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
    }

    /// A TCP listener on `address` in the namespace. Binds with IP_FREEBIND, so it can
    /// come up before its VIP is assigned.
    pub async fn tcp_listener(&self, address: SocketAddrV4) -> std::io::Result<tokio::net::TcpListener> {
        let listener = self
            .call(move || {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                socket.set_reuse_address(true)?;
                socket.set_freebind_v4(true)?;
                socket.bind(&address.into())?;
                socket.listen(1024)?;
                socket.set_nonblocking(true)?;
                Ok(std::net::TcpListener::from(socket))
            })
            .await?;
        tokio::net::TcpListener::from_std(listener)
    }

    /// A UDP socket bound to `address` in the namespace.
    pub async fn udp_socket(&self, address: SocketAddrV4) -> std::io::Result<tokio::net::UdpSocket> {
        let socket = self
            .call(move || {
                let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
                socket.set_reuse_address(true)?;
                socket.set_freebind_v4(true)?;
                socket.bind(&address.into())?;
                socket.set_nonblocking(true)?;
                Ok(std::net::UdpSocket::from(socket))
            })
            .await?;
        tokio::net::UdpSocket::from_std(socket)
    }
}
