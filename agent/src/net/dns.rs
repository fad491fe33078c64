//! Service discovery and a way to outside names: a small DNS server in the balancer
//! namespace (UDP and TCP on :53) answering `<service>` and `<service>.orch` with the
//! service's VIP (A records) — NXDOMAIN for other names of the cluster's domain and
//! single labels — and relaying every other query, as it is, to the node's upstream
//! resolvers (the node's resolv.conf, or `--upstream-dns`), over UDP, or TCP for TCP
//! clients, from sockets in the balancer namespace (masqueraded on the way out). With no
//! upstream, outside names get NXDOMAIN. Which query goes where is a pure function; the
//! wire format is hickory-proto's.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::sockets::NsSockets;
use super::table::DNS_DOMAIN;

/// Answers are short-lived: a VIP can move when a service is recreated.
const TTL_SECONDS: u32 = 5;
/// How long one upstream gets to answer before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries relayed at once; more are dropped (the client asks again).
const MAX_IN_FLIGHT: usize = 256;
/// TCP clients served at once, and how long one may stay idle.
const MAX_TCP_CLIENTS: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);

pub type Names = Arc<RwLock<BTreeMap<String, Ipv4Addr>>>;

/// What to do with one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The cluster's own answer.
    Answer(Vec<u8>),
    /// A name outside the cluster: relay the query upstream.
    Forward,
    /// Not a query: no reply.
    Ignore,
}

/// Whether `name` (lower case, no trailing dot) belongs to the cluster: a service, the
/// cluster's domain or a name in it, or a single label (a service that is not there).
fn in_cluster(name: &str, names: &BTreeMap<String, Ipv4Addr>) -> bool {
    names.contains_key(name) || name == DNS_DOMAIN || name.ends_with(&format!(".{DNS_DOMAIN}")) || !name.contains('.')
}

/// The decision for one query packet; `forwarding` when there are upstream resolvers.
pub fn decide(request: &[u8], names: &BTreeMap<String, Ipv4Addr>, forwarding: bool) -> Decision {
    let Ok(query) = Message::from_vec(request) else { return Decision::Ignore };
    if query.metadata.message_type != MessageType::Query {
        return Decision::Ignore;
    }
    let outside = query.queries.iter().any(|q| !in_cluster(q.name().to_ascii().trim_end_matches('.').to_ascii_lowercase().as_str(), names));
    if outside && forwarding {
        return Decision::Forward;
    }
    answer(&query, names).map_or(Decision::Ignore, Decision::Answer)
}

/// The cluster's answer to `query`: the VIP of a known name, NXDOMAIN otherwise.
fn answer(query: &Message, names: &BTreeMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.authoritative = true;
    let mut code = ResponseCode::NoError;
    for question in &query.queries {
        let name = question.name().to_ascii().trim_end_matches('.').to_ascii_lowercase();
        match names.get(&name) {
            Some(vip) => {
                if question.query_type() == RecordType::A || question.query_type() == RecordType::ANY {
                    response.add_answer(Record::from_rdata(question.name().clone(), TTL_SECONDS, RData::A(A(*vip))));
                }
                // Other types of a known name: no data, no error.
            }
            None => code = ResponseCode::NXDomain,
        }
        response.add_query(question.clone());
    }
    response.metadata.response_code = code;
    response.to_vec().ok()
}

/// SERVFAIL for `request`: no upstream answered.
fn server_failure(request: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(request).ok()?;
    let mut response = Message::response(query.metadata.id, query.metadata.op_code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.response_code = ResponseCode::ServFail;
    for question in &query.queries {
        response.add_query(question.clone());
    }
    response.to_vec().ok()
}

/// Whether `reply` answers `request` (the same message id).
fn same_id(request: &[u8], reply: &[u8]) -> bool {
    request.len() >= 2 && reply.len() >= 2 && request[..2] == reply[..2]
}

/// The node's upstream resolvers, reached from sockets in the balancer namespace.
pub struct Upstream {
    pub servers: Vec<SocketAddr>,
    pub sockets: Arc<NsSockets>,
}

impl Upstream {
    /// The first upstream's reply to `request` over UDP; SERVFAIL when none answers.
    async fn over_udp(&self, request: &[u8]) -> Option<Vec<u8>> {
        for server in &self.servers {
            let SocketAddr::V4(server) = server else { continue };
            let Ok(socket) = self.sockets.udp_socket(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).await else { continue };
            if socket.connect(server).await.is_err() || socket.send(request).await.is_err() {
                continue;
            }
            let mut buffer = vec![0u8; 65_535];
            let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
            while let Ok(Ok(length)) = tokio::time::timeout_at(deadline, socket.recv(&mut buffer)).await {
                if same_id(request, &buffer[..length]) {
                    buffer.truncate(length);
                    return Some(buffer);
                }
            }
            tracing::debug!(%server, "upstream DNS did not answer in time");
        }
        server_failure(request)
    }

    /// The first upstream's reply to `request` over TCP; SERVFAIL when none answers.
    async fn over_tcp(&self, request: &[u8]) -> Option<Vec<u8>> {
        for server in &self.servers {
            let attempt = async {
                let socket = self.sockets.tcp_socket().await?;
                let mut stream = socket.connect(*server).await?;
                write_framed(&mut stream, request).await?;
                read_framed(&mut stream).await
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(reply)) if same_id(request, &reply) => return Some(reply),
                _ => tracing::debug!(%server, "upstream DNS over TCP did not answer in time"),
            }
        }
        server_failure(request)
    }
}

async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let length = stream.read_u16().await?;
    let mut message = vec![0u8; usize::from(length)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let length = u16::try_from(message.len()).map_err(|_| std::io::Error::other("a DNS message over 64 KiB"))?;
    stream.write_all(&[&length.to_be_bytes()[..], message].concat()).await
}

fn snapshot(names: &Names) -> BTreeMap<String, Ipv4Addr> {
    names.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

/// Answers queries on `socket` until the task is aborted; outside names are relayed to
/// `upstream` (at most [`MAX_IN_FLIGHT`] at once).
pub async fn serve(socket: UdpSocket, names: Names, upstream: Option<Arc<Upstream>>) {
    let socket = Arc::new(socket);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut buffer = vec![0u8; 65_535];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else { continue };
        let request = buffer[..length].to_vec();
        let decision = {
            let names = names.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            decide(&request, &names, upstream.is_some())
        };
        match (decision, &upstream) {
            (Decision::Answer(reply), _) => {
                let _ = socket.send_to(&reply, peer).await;
            }
            (Decision::Forward, Some(upstream)) => {
                let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else { continue };
                let (socket, upstream) = (Arc::clone(&socket), Arc::clone(upstream));
                tokio::spawn(async move {
                    if let Some(reply) = upstream.over_udp(&request).await {
                        let _ = socket.send_to(&reply, peer).await;
                    }
                    drop(permit);
                });
            }
            _ => {}
        }
    }
}

/// Serves DNS over TCP on `listener` (length-prefixed messages, several per connection)
/// until the task is aborted.
pub async fn serve_tcp(listener: TcpListener, names: Names, upstream: Option<Arc<Upstream>>) {
    let clients = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let Ok(permit) = Arc::clone(&clients).try_acquire_owned() else { continue };
        let (names, upstream) = (Arc::clone(&names), upstream.clone());
        tokio::spawn(async move {
            while let Ok(Ok(request)) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await {
                let reply = match (decide(&request, &snapshot(&names), upstream.is_some()), &upstream) {
                    (Decision::Answer(reply), _) => Some(reply),
                    (Decision::Forward, Some(upstream)) => upstream.over_tcp(&request).await,
                    _ => None,
                };
                match reply {
                    Some(reply) if write_framed(&mut stream, &reply).await.is_ok() => {}
                    _ => break,
                }
            }
            drop(permit);
        });
    }
}

/// `--upstream-dns`: `none`, or addresses (`IP` or `IP:PORT`, comma-separated); unset,
/// the node's own resolvers — /etc/resolv.conf, or systemd-resolved's upstream list
/// when that file names only its loopback stub.
pub fn upstream_dns(flag: Option<&str>) -> Result<Vec<SocketAddr>, String> {
    match flag.map(str::trim) {
        Some("none") => Ok(Vec::new()),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .map(|entry| {
                entry
                    .parse::<SocketAddrV4>()
                    .map(SocketAddr::V4)
                    .or_else(|_| entry.parse::<Ipv4Addr>().map(|ip| SocketAddr::from((ip, 53))))
                    .map_err(|_| format!("--upstream-dns: {entry:?} is not an IPv4 address or IP:PORT (or `none`)"))
            })
            .collect(),
        None => {
            let read = |path: &str| std::fs::read_to_string(path).map(|text| upstreams_from_resolv_conf(&text)).unwrap_or_default();
            let own = read("/etc/resolv.conf");
            Ok(if own.is_empty() { read("/run/systemd/resolve/resolv.conf") } else { own })
        }
    }
}

/// The upstream resolvers in a resolv.conf: its `nameserver` lines, port 53, except
/// loopback addresses (a local stub such as systemd-resolved's 127.0.0.53 is not
/// reachable from the balancer namespace) and IPv6 ones (pods are IPv4-only).
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|address| address.parse::<Ipv4Addr>().ok())
        .filter(|address| !address.is_loopback() && !address.is_unspecified())
        .map(|address| SocketAddr::from((address, 53)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn ask(name: &str, kind: RecordType, names: &BTreeMap<String, Ipv4Addr>) -> Message {
        let mut query = Message::query();
        query.metadata.id = 4242;
        query.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        match decide(&query.to_vec().expect("encode"), names, false) {
            Decision::Answer(reply) => Message::from_vec(&reply).expect("decode"),
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn answers_services_and_refuses_the_rest() {
        let names = BTreeMap::from([("web".to_owned(), Ipv4Addr::new(10, 96, 0, 10)), ("web.orch".to_owned(), Ipv4Addr::new(10, 96, 0, 10))]);
        for name in ["web", "web.orch.", "WEB.orch"] {
            let reply = ask(name, RecordType::A, &names);
            assert_eq!(reply.metadata.id, 4242);
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(reply.answers.len(), 1, "{name}");
            assert_eq!(&reply.answers[0].data, &RData::A(A(Ipv4Addr::new(10, 96, 0, 10))));
        }
        let missing = ask("nope.orch", RecordType::A, &names);
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert!(missing.answers.is_empty());
        let aaaa = ask("web", RecordType::AAAA, &names);
        assert_eq!((aaaa.metadata.response_code, aaaa.answers.len()), (ResponseCode::NoError, 0));
        assert_eq!(decide(b"garbage", &names, true), Decision::Ignore);
    }

    fn query(name: &str) -> Vec<u8> {
        let mut query = Message::query();
        query.metadata.id = 7;
        query.add_query(Query::query(Name::from_ascii(name).expect("name"), RecordType::A));
        query.to_vec().expect("encode")
    }

    #[test]
    fn names_outside_the_cluster_are_forwarded_when_there_is_an_upstream() {
        let names = BTreeMap::from([("web".to_owned(), Ipv4Addr::new(10, 96, 0, 10)), ("web.orch".to_owned(), Ipv4Addr::new(10, 96, 0, 10))]);
        for (name, forwarded) in
            [("deb.debian.org", true), ("outside.test.", true), ("web", false), ("web.orch", false), ("nope.orch", false), ("orch", false), ("printer", false)]
        {
            let decision = decide(&query(name), &names, true);
            assert_eq!(decision == Decision::Forward, forwarded, "{name}: {decision:?}");
        }
        match decide(&query("deb.debian.org"), &names, false) {
            Decision::Answer(reply) => assert_eq!(Message::from_vec(&reply).expect("decode").metadata.response_code, ResponseCode::NXDomain),
            other => panic!("without an upstream: {other:?}"),
        }
        let failed = server_failure(&query("deb.debian.org")).expect("SERVFAIL");
        let failed = Message::from_vec(&failed).expect("decode");
        assert_eq!((failed.metadata.id, failed.metadata.response_code, failed.queries.len()), (7, ResponseCode::ServFail, 1));
        assert!(same_id(&query("a.b"), &failed.to_vec().expect("encode")));
    }

    #[test]
    fn upstreams_come_from_resolv_conf_without_loopback_stubs() {
        let text = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.53\noptions edns0\nnameserver ::1\nnameserver 2001:db8::1\nsearch lan\n  nameserver 198.51.100.7\nnameserver\n";
        assert_eq!(upstreams_from_resolv_conf(text), [SocketAddr::from(([192, 0, 2, 53], 53)), SocketAddr::from(([198, 51, 100, 7], 53))]);
        assert!(upstreams_from_resolv_conf("nameserver 127.0.0.1\n").is_empty());
        assert_eq!(upstream_dns(Some("none")), Ok(vec![]));
        assert_eq!(
            upstream_dns(Some("203.0.113.53, 192.0.2.1:5353")),
            Ok(vec![SocketAddr::from(([203, 0, 113, 53], 53)), SocketAddr::from(([192, 0, 2, 1], 5353))])
        );
        assert!(upstream_dns(Some("dns.example")).expect_err("a name").contains("\"dns.example\""));
    }
}
