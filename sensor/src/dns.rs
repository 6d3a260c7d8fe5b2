//! DNS messages the kernel copied off UDP port 53, parsed (pure: bytes in, fields out), and the
//! memory of answers that lets a later connect to an answered address carry the name the
//! process looked up.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use simple_dns::{rdata::RData, Packet, PacketFlag, QTYPE, RCODE};

/// What a DNS message says, as the sensor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsMessage {
    pub id: u16,
    /// A response (the RESPONSE bit), else a query.
    pub response: bool,
    /// The first question's name, without the trailing dot.
    pub name: String,
    /// The first question's type (`A`, `AAAA`, `TXT`...).
    pub qtype: String,
    /// Of a response: its response code by name.
    pub rcode: Option<String>,
    /// A and AAAA records of the answer section, in order.
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The bytes are not a DNS message (or were cut by the kernel's copy bound mid-record).
    #[error("not a DNS message: {0}")]
    Malformed(#[from] simple_dns::SimpleDnsError),
    /// A message without a question: nothing to report.
    #[error("DNS message without a question")]
    NoQuestion,
}

pub fn parse(payload: &[u8]) -> Result<DnsMessage, DnsError> {
    let packet = Packet::parse(payload)?;
    let question = packet.questions.first().ok_or(DnsError::NoQuestion)?;
    let response = packet.has_flags(PacketFlag::RESPONSE);
    let addresses = packet
        .answers
        .iter()
        .filter_map(|answer| match &answer.rdata {
            RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a.address))),
            RData::AAAA(aaaa) => Some(IpAddr::V6(Ipv6Addr::from(aaaa.address))),
            _ => None,
        })
        .collect();
    Ok(DnsMessage {
        id: packet.id(),
        response,
        name: question.qname.to_string().trim_end_matches('.').to_owned(),
        qtype: match question.qtype {
            QTYPE::TYPE(t) => format!("{t:?}"),
            other => format!("{other:?}"),
        },
        rcode: response.then(|| rcode_name(packet.rcode()).to_owned()),
        addresses,
    })
}

fn rcode_name(rcode: RCODE) -> &'static str {
    match rcode {
        RCODE::NoError => "NOERROR",
        RCODE::FormatError => "FORMERR",
        RCODE::ServerFailure => "SERVFAIL",
        RCODE::NameError => "NXDOMAIN",
        RCODE::NotImplemented => "NOTIMP",
        RCODE::Refused => "REFUSED",
        _ => "OTHER",
    }
}

/// How long an answer names its addresses for later connects, in ns of the boot clock.
pub const NAME_RETENTION_NS: u64 = 10 * 60 * 1_000_000_000;
/// Addresses remembered, per table: a bound on memory whatever the lookup rate.
pub const NAME_CAPACITY: usize = 8192;

/// Answered addresses and the names they answered, per process and host-wide. A connect is
/// named after the same process's lookup first (two processes may resolve different names to
/// one shared address), else the host's latest. Per process in its own table, so that forgetting
/// an exited process costs one removal.
#[derive(Debug, Default)]
pub struct ResolvedNames {
    by_process: HashMap<u32, HashMap<IpAddr, (String, u64)>>,
    by_host: HashMap<IpAddr, (String, u64)>,
}

/// Addresses remembered for one process.
const PER_PROCESS_CAPACITY: usize = 1024;

impl ResolvedNames {
    pub fn record(&mut self, tgid: u32, address: IpAddr, name: &str, now_ns: u64) {
        if self.by_process.len() < NAME_CAPACITY || self.by_process.contains_key(&tgid) {
            let own = self.by_process.entry(tgid).or_default();
            insert_bounded(own, PER_PROCESS_CAPACITY, address, name.to_owned(), now_ns);
        }
        insert_bounded(
            &mut self.by_host,
            NAME_CAPACITY,
            address,
            name.to_owned(),
            now_ns,
        );
    }

    pub fn lookup(&self, tgid: u32, address: IpAddr, now_ns: u64) -> Option<&str> {
        fn fresh(entry: &(String, u64), now_ns: u64) -> Option<&str> {
            let (name, at) = entry;
            (now_ns.saturating_sub(*at) <= NAME_RETENTION_NS).then_some(name.as_str())
        }
        let fresh = |entry| fresh(entry, now_ns);
        self.by_process
            .get(&tgid)
            .and_then(|own| own.get(&address))
            .and_then(fresh)
            .or_else(|| self.by_host.get(&address).and_then(fresh))
    }

    /// Forgets a process's own lookups (it exited); the host-wide ones stay.
    pub fn forget_process(&mut self, tgid: u32) {
        self.by_process.remove(&tgid);
    }

    /// Processes with lookups of their own, and addresses in the host-wide table.
    pub fn len(&self) -> (usize, usize) {
        (self.by_process.len(), self.by_host.len())
    }
}

fn insert_bounded(
    table: &mut HashMap<IpAddr, (String, u64)>,
    capacity: usize,
    key: IpAddr,
    name: String,
    now_ns: u64,
) {
    if table.len() >= capacity && !table.contains_key(&key) {
        table.retain(|_, (_, at)| now_ns.saturating_sub(*at) <= NAME_RETENTION_NS);
        if table.len() >= capacity {
            // Still full of fresh answers: the oldest one goes.
            if let Some(oldest) = table.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
                table.remove(&oldest);
            }
        }
    }
    table.insert(key, (name, now_ns));
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::{rdata, Name, Question, ResourceRecord, CLASS, QCLASS, TYPE};

    fn answer(id: u16, name: &str, v4: [u8; 4]) -> Vec<u8> {
        let mut packet = Packet::new_reply(id);
        let qname = Name::new_unchecked(name);
        packet.questions.push(Question::new(
            qname.clone(),
            TYPE::A.into(),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        packet.answers.push(ResourceRecord::new(
            qname,
            CLASS::IN,
            60,
            RData::A(rdata::A {
                address: u32::from(Ipv4Addr::from(v4)),
            }),
        ));
        packet.build_bytes_vec().expect("build")
    }

    #[test]
    fn an_answer_names_its_question_and_addresses() {
        let message = parse(&answer(7, "c2.example.org", [10, 1, 2, 3])).expect("parse");
        assert_eq!(message.id, 7);
        assert!(message.response);
        assert_eq!(message.name, "c2.example.org");
        assert_eq!(message.qtype, "A");
        assert_eq!(message.rcode.as_deref(), Some("NOERROR"));
        assert_eq!(message.addresses, [IpAddr::from([10, 1, 2, 3])]);
    }

    #[test]
    fn a_query_has_no_answers_and_garbage_is_an_error() {
        let mut query = Packet::new_query(9);
        query.questions.push(Question::new(
            Name::new_unchecked("x.test"),
            TYPE::AAAA.into(),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let message = parse(&query.build_bytes_vec().expect("build")).expect("parse");
        assert!(!message.response);
        assert_eq!(
            (message.name.as_str(), message.qtype.as_str()),
            ("x.test", "AAAA")
        );
        assert_eq!(message.rcode, None);
        assert!(parse(b"\x01\x02garbage").is_err());
        // Cut mid-record (the kernel's copy bound): an error, never a panic.
        let whole = answer(1, "a.example", [1, 2, 3, 4]);
        for cut in 0..whole.len() {
            let _ = parse(&whole[..cut]);
        }
    }

    #[test]
    fn names_prefer_the_process_own_lookup_expire_and_stay_bounded() {
        let mut names = ResolvedNames::default();
        let ip = IpAddr::from([10, 0, 0, 1]);
        names.record(100, ip, "a.example", 0);
        names.record(200, ip, "b.example", 1);
        assert_eq!(names.lookup(100, ip, 2), Some("a.example"));
        assert_eq!(names.lookup(300, ip, 2), Some("b.example"), "host-wide");
        assert_eq!(names.lookup(100, ip, NAME_RETENTION_NS + 2), None);
        names.forget_process(100);
        assert_eq!(names.lookup(100, ip, 2), Some("b.example"));
        for i in 0..(NAME_CAPACITY as u32 + 10) {
            names.record(i, IpAddr::from(i.to_be_bytes()), "n", 5);
        }
        let (per_process, host) = names.len();
        assert!(per_process <= NAME_CAPACITY && host <= NAME_CAPACITY);
    }
}
