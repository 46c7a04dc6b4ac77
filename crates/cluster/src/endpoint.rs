//! Where the broker's four sockets live. One address names all four: `HOST[:PORT]` means
//! TCP ports PORT (sources), PORT+1 (work), PORT+2 (results) and PORT+3 (published
//! numbers and primes), default PORT 5555; a path (it contains `/`) means four `ipc://`
//! sockets `PATH.src`, `PATH.work`, `PATH.res`, `PATH.pub`. Clients take a list,
//! `PRIMARY,BACKUP` ([`Brokers`]), for a Binary Star pair.

use std::fmt;
use std::net::ToSocketAddrs;
use thiserror::Error;

pub const DEFAULT_PORT: u16 = 5555;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerAddr {
    Tcp {
        host: String,
        port: u16,
    },
    Ipc {
        path: String,
    },
    /// `inproc://NAME`: threads of one process (the notes' third transport), sharing one
    /// ZeroMQ context.
    Inproc {
        name: String,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("broker address is empty")]
    Empty,
    #[error("broker address {0:?}: the port is not a number from 1 to 65532")]
    BadPort(String),
    #[error("broker address {0:?}: cannot resolve the host")]
    Unresolvable(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Sources,
    Work,
    Results,
    Publish,
}

impl BrokerAddr {
    /// Parses and, for TCP, resolves the host (so a typo is reported now, not never).
    pub fn parse(s: &str) -> Result<BrokerAddr, AddrError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        if let Some(name) = s.strip_prefix("inproc://") {
            if name.is_empty() {
                return Err(AddrError::Empty);
            }
            return Ok(BrokerAddr::Inproc { name: name.to_string() });
        }
        let tcp = s.strip_prefix("tcp://");
        if tcp.is_none() && s.contains('/') {
            return Ok(BrokerAddr::Ipc { path: s.strip_prefix("ipc://").unwrap_or(s).to_string() });
        }
        let s = tcp.unwrap_or(s);
        let (host, port) = match s.rsplit_once(':') {
            // An IPv6 literal without a port ("::1") has colons but no brackets.
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                let port = p.parse::<u16>().ok().filter(|p| (1..=u16::MAX - 3).contains(p));
                (h.to_string(), port.ok_or_else(|| AddrError::BadPort(s.to_string()))?)
            }
            _ => (s.to_string(), DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(AddrError::Empty);
        }
        let host = if host == "*" {
            host
        } else {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let ip = (bare, port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| AddrError::Unresolvable(s.to_string()))?
                .ip();
            if ip.is_ipv6() {
                format!("[{ip}]")
            } else {
                ip.to_string()
            }
        };
        Ok(BrokerAddr::Tcp { host, port })
    }

    /// The ZeroMQ endpoint of one of the broker's sockets.
    pub fn endpoint(&self, role: Role) -> String {
        let (offset, suffix) = match role {
            Role::Sources => (0, "src"),
            Role::Work => (1, "work"),
            Role::Results => (2, "res"),
            Role::Publish => (3, "pub"),
        };
        match self {
            BrokerAddr::Tcp { host, port } => format!("tcp://{host}:{}", port + offset),
            BrokerAddr::Ipc { path } => format!("ipc://{path}.{suffix}"),
            BrokerAddr::Inproc { name } => format!("inproc://{name}.{suffix}"),
        }
    }
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            BrokerAddr::Ipc { path } => f.write_str(path),
            BrokerAddr::Inproc { name } => write!(f, "inproc://{name}"),
        }
    }
}

/// The addresses of a broker pair, `PRIMARY,BACKUP` (or one address): clients start
/// with the first and turn to the next when the one they use stops answering (Binary
/// Star); subscribers listen to all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokers(Vec<BrokerAddr>);

impl Brokers {
    pub fn parse(s: &str) -> Result<Brokers, AddrError> {
        let list = s.split(',').map(BrokerAddr::parse).collect::<Result<Vec<_>, _>>()?;
        Ok(Brokers(list))
    }

    /// The `i`-th address, counting round the list.
    pub fn get(&self, i: usize) -> &BrokerAddr {
        &self.0[i % self.0.len()]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &BrokerAddr> {
        self.0.iter()
    }
}

impl From<BrokerAddr> for Brokers {
    fn from(a: BrokerAddr) -> Brokers {
        Brokers(vec![a])
    }
}

impl From<&BrokerAddr> for Brokers {
    fn from(a: &BrokerAddr) -> Brokers {
        Brokers(vec![a.clone()])
    }
}

impl From<&Brokers> for Brokers {
    fn from(b: &Brokers) -> Brokers {
        b.clone()
    }
}

impl fmt::Display for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_of_the_address() {
        let a = BrokerAddr::parse("127.0.0.1:7000").unwrap();
        assert_eq!(a.endpoint(Role::Sources), "tcp://127.0.0.1:7000");
        assert_eq!(a.endpoint(Role::Publish), "tcp://127.0.0.1:7003");
        assert_eq!(BrokerAddr::parse("localhost").unwrap().endpoint(Role::Work), "tcp://127.0.0.1:5556");
        assert_eq!(BrokerAddr::parse("tcp://127.0.0.2:9").unwrap().to_string(), "127.0.0.2:9");
        assert_eq!(BrokerAddr::parse("[::1]:7000").unwrap().endpoint(Role::Results), "tcp://[::1]:7002");
        assert_eq!(BrokerAddr::parse("/tmp/b").unwrap().endpoint(Role::Results), "ipc:///tmp/b.res");
        assert_eq!(BrokerAddr::parse("*:6000").unwrap().endpoint(Role::Sources), "tcp://*:6000");
        let inproc = BrokerAddr::parse("inproc://b").unwrap();
        assert_eq!(inproc.endpoint(Role::Work), "inproc://b.work");
        assert_eq!(inproc.to_string(), "inproc://b");
        assert_eq!(BrokerAddr::parse("inproc://"), Err(AddrError::Empty));
    }

    #[test]
    fn bad_addresses_say_why() {
        assert_eq!(BrokerAddr::parse(""), Err(AddrError::Empty));
        assert_eq!(BrokerAddr::parse(":5"), Err(AddrError::Empty));
        assert!(matches!(BrokerAddr::parse("127.0.0.1:x"), Err(AddrError::BadPort(_))));
        assert!(matches!(BrokerAddr::parse("127.0.0.1:65535"), Err(AddrError::BadPort(_))));
        assert!(matches!(BrokerAddr::parse("127.0.0.1:0"), Err(AddrError::BadPort(_))));
        assert!(matches!(BrokerAddr::parse("no such host!:5"), Err(AddrError::Unresolvable(_))));
        assert_eq!(Brokers::parse("127.0.0.1:7000,"), Err(AddrError::Empty));
        assert!(matches!(Brokers::parse("127.0.0.1:7000,127.0.0.1:x"), Err(AddrError::BadPort(_))));
    }

    #[test]
    fn lists_of_brokers() {
        let b = Brokers::parse("127.0.0.1:7000,/tmp/b").unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.get(3).endpoint(Role::Sources), "ipc:///tmp/b.src");
        assert_eq!(b.to_string(), "127.0.0.1:7000,/tmp/b");
        assert_eq!(Brokers::parse("localhost:9").unwrap().to_string(), "127.0.0.1:9");
    }
}
