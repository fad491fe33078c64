//! Service discovery: a small DNS responder in the balancer namespace answering
//! `<service>` and `<service>.orch` with the service's VIP (A records); NXDOMAIN for
//! any other name. The wire format is hickory-proto's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

/// Answers are short-lived: a VIP can move when a service is recreated.
const TTL_SECONDS: u32 = 5;

pub type Names = Arc<RwLock<BTreeMap<String, Ipv4Addr>>>;

/// The answer to one query packet, or `None` for a packet that is not a query.
pub fn answer(request: &[u8], names: &BTreeMap<String, Ipv4Addr>) -> Option<Vec<u8>> {
    let query = Message::from_vec(request).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
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

/// Answers queries on `socket` until the task is aborted.
pub async fn serve(socket: UdpSocket, names: Names) {
    let mut buffer = vec![0u8; 1500];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer).await else { continue };
        let reply = {
            let names = names.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            answer(&buffer[..length], &names)
        };
        if let Some(reply) = reply {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
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
        let reply = answer(&query.to_vec().expect("encode"), names).expect("a reply");
        Message::from_vec(&reply).expect("decode")
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
        assert!(answer(b"garbage", &names).is_none());
    }
}
