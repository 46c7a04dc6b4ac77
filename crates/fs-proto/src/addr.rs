//! Server addresses as users type them: `HOST:PORT` for TCP, a path for a Unix socket.

use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// Host name or IP literal (IPv6 without brackets) and port.
    Tcp {
        host: String,
        port: u16,
    },
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad address '{0}': expected HOST:PORT or a Unix socket path containing '/'")]
pub struct AddrError(pub String);

impl std::str::FromStr for Addr {
    type Err = AddrError;

    /// Anything with a `/` is a socket path; everything else must be `HOST:PORT` with a
    /// non-empty host and a numeric port (`[::1]:7000` for IPv6).
    fn from_str(s: &str) -> Result<Addr, AddrError> {
        let bad = || AddrError(s.to_string());
        if s.contains('/') {
            return Ok(Addr::Unix(PathBuf::from(s)));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) || (host.contains(':') && !s.starts_with('[')) {
            return Err(bad());
        }
        let port = port.parse::<u16>().map_err(|_| bad())?;
        Ok(Addr::Tcp { host: host.to_string(), port })
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "{host}:{port}"),
            Addr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_type() {
        assert_eq!("127.0.0.1:7000".parse(), Ok(Addr::Tcp { host: "127.0.0.1".into(), port: 7000 }));
        assert_eq!("localhost:0".parse(), Ok(Addr::Tcp { host: "localhost".into(), port: 0 }));
        assert_eq!("[::1]:9".parse(), Ok(Addr::Tcp { host: "::1".into(), port: 9 }));
        assert_eq!("/tmp/s.sock".parse(), Ok(Addr::Unix("/tmp/s.sock".into())));
        assert_eq!("./s".parse(), Ok(Addr::Unix("./s".into())));
        assert_eq!(Addr::Tcp { host: "::1".into(), port: 9 }.to_string(), "[::1]:9");
    }

    #[test]
    fn refuses_malformed() {
        for bad in ["", "host", ":80", "host:", "host:99999", "host:x", "::1:80", "a b:1"] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
    }
}
