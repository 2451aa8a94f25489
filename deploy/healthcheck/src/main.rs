//! `tgb-healthcheck URL [TIMEOUT_SECS]`: exits 0 when `GET URL` answers 2xx within the timeout
//! (default 3 s), 1 otherwise, with the reason on stderr. Plain `http://host:port/path` only:
//! it probes a service's own `/healthz` or `/readyz` from inside its container.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: tgb-healthcheck http://HOST:PORT/PATH [TIMEOUT_SECS]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (url, timeout) = match args.as_slice() {
        [url] => (url.as_str(), Duration::from_secs(3)),
        [url, secs] => match secs.parse::<u64>() {
            Ok(s) if s > 0 => (url.as_str(), Duration::from_secs(s)),
            _ => {
                return fail(&format!(
                    "timeout {secs:?} is not a positive number\n{USAGE}"
                ));
            }
        },
        _ => return fail(USAGE),
    };
    match probe(url, timeout) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => fail(&format!("{url}: HTTP {status}")),
        Err(reason) => fail(&format!("{url}: {reason}")),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("tgb-healthcheck: {message}");
    ExitCode::FAILURE
}

/// Splits `http://host:port/path` into (`host:port`, `host`, `/path`).
fn parse(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported\n{USAGE}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("no host\n{USAGE}"));
    }
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_owned();
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, host, path.to_owned()))
}

/// The status code of `GET url`.
fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let (addr, host, path) = parse(url)?;
    let target = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to nothing"))?;
    let mut stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect: {e}"))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tgb-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    // The status line is all that is needed: read until its end (or 1 KiB).
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(code))) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("not an HTTP answer: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parse_splits_host_port_and_path() {
        assert_eq!(
            parse("http://127.0.0.1:8081/readyz").unwrap(),
            (
                "127.0.0.1:8081".into(),
                "127.0.0.1".into(),
                "/readyz".into()
            )
        );
        assert_eq!(
            parse("http://localhost").unwrap(),
            ("localhost:80".into(), "localhost".into(), "/".into())
        );
        assert!(parse("https://x/").is_err());
        assert!(parse("http:///x").is_err());
    }
}
