//! Ephemeral loopback ports.
//!
//! For servers we spawn as separate processes (the registry) we cannot hand
//! over a bound listener, so we bind `127.0.0.1:0`, read the port the kernel
//! chose and release it. Another process could take it in between; the
//! kernel hands out ephemeral ports round-robin, so this is rare, and the
//! registry launcher reports a bind failure clearly if it happens.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A loopback port that was free a moment ago.
///
/// # Panics
/// When nothing can be bound on 127.0.0.1 at all.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// `127.0.0.1:<free port>`.
///
/// # Panics
/// When nothing can be bound on 127.0.0.1 at all.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no local address for a bound listener: {e}"))
}

/// Two different free loopback addresses: both are held bound at once before
/// being released, so the kernel cannot hand out the same port twice (two
/// separate `free_addr` calls can, and a server given the same address for
/// two listeners refuses to start).
///
/// # Panics
/// When nothing can be bound on 127.0.0.1 at all.
pub fn free_addr_pair() -> (SocketAddr, SocketAddr) {
    let bind = || {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
    };
    let (a, b) = (bind(), bind());
    let addr = |l: &TcpListener| {
        l.local_addr()
            .unwrap_or_else(|e| panic!("no local address for a bound listener: {e}"))
    };
    (addr(&a), addr(&b))
}

/// `n` different free loopback addresses, all held bound at once before
/// being released (see [`free_addr_pair`]).
///
/// # Panics
/// When nothing can be bound on 127.0.0.1 at all.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .unwrap_or_else(|e| panic!("no local address for a bound listener: {e}"))
        })
        .collect()
}

/// Sends `GET <path>` over a raw socket and reports whether an HTTP status
/// line came back, whatever the status: "is the server up yet" for the
/// processes the tests spawn (registry, moto).
pub fn answers_http(addr: SocketAddr, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    head[..got].starts_with(b"HTTP/1.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn pairs_are_distinct() {
        for _ in 0..200 {
            let (a, b) = free_addr_pair();
            assert_ne!(a, b);
        }
    }

    #[test]
    fn free_addrs_are_distinct() {
        let addrs = free_addrs(5);
        let unique: std::collections::HashSet<_> = addrs.iter().collect();
        assert_eq!((addrs.len(), unique.len()), (5, 5), "{addrs:?}");
    }
}
