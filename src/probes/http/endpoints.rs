//! Where this node's servers can be called: the addresses of their network namespaces
//! with the ports they serve, so that the service graph names a server called at one of
//! them (a container of this node called at its own address) rather than the address.
//!
//! A namespace's addresses come from its processes' `/proc/<pid>/net` files, read at
//! most once per `REFRESH` per namespace; loopback addresses are left out, as a call to
//! one reaches the caller's own namespace.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::enrich::netns::{namespace_of, tcp_sockets, TcpSocket, TCP_ESTABLISHED, TCP_LISTEN};

/// How long a namespace's addresses are trusted before they are read again.
const REFRESH: Duration = Duration::from_secs(10);

/// The non-loopback addresses of network namespaces, by namespace inode, at most `max`
/// namespaces (the least recently read leave first).
pub struct NamespaceAddresses {
    by_namespace: HashMap<u64, (Instant, Vec<IpAddr>)>,
    max: usize,
}

impl NamespaceAddresses {
    pub fn new(max: usize) -> Self {
        NamespaceAddresses {
            by_namespace: HashMap::new(),
            max,
        }
    }

    /// The addresses of the network namespace process `pid` is in; none when it is gone.
    pub fn of_process(&mut self, pid: u32, now: Instant) -> &[IpAddr] {
        let Some(namespace) = namespace_of(pid) else {
            return &[];
        };
        let stale = self
            .by_namespace
            .get(&namespace)
            .is_none_or(|(read, _)| now.duration_since(*read) >= REFRESH);
        if stale {
            if !self.by_namespace.contains_key(&namespace) && self.by_namespace.len() >= self.max {
                let oldest = self
                    .by_namespace
                    .iter()
                    .min_by_key(|(_, (read, _))| *read)
                    .map(|(inode, _)| *inode);
                if let Some(oldest) = oldest {
                    self.by_namespace.remove(&oldest);
                }
            }
            let read = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/net/{name}"));
            let mut addresses: Vec<IpAddr> = read("fib_trie")
                .map(|text| local_ipv4(&text).into_iter().map(IpAddr::V4).collect())
                .unwrap_or_default();
            if let Ok(text) = read("if_inet6") {
                addresses.extend(local_ipv6(&text).into_iter().map(IpAddr::V6));
            }
            self.by_namespace.insert(namespace, (now, addresses));
        }
        self.by_namespace
            .get(&namespace)
            .map_or(&[], |(_, addresses)| addresses.as_slice())
    }
}

/// The host addresses (`/32 host LOCAL`) of a `fib_trie`, loopback ones left out.
fn local_ipv4(fib_trie: &str) -> Vec<Ipv4Addr> {
    let mut found = BTreeSet::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in fib_trie.lines() {
        let line = line.trim_start();
        if let Some(address) = line.strip_prefix("|-- ") {
            last = address.trim().parse().ok();
        } else if line.starts_with("/32 host LOCAL") {
            if let Some(address) = last.take().filter(|a| !a.is_loopback()) {
                found.insert(address);
            }
        }
    }
    found.into_iter().collect()
}

/// The addresses of an `if_inet6` (32 hex digits first on each line), loopback and
/// link-local ones left out.
fn local_ipv6(if_inet6: &str) -> Vec<Ipv6Addr> {
    if_inet6
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(Ipv6Addr::from)
        .filter(|a| !a.is_loopback() && !a.is_unicast_link_local())
        .collect()
}

/// The local addresses of this node's connected TCP clients, in every network namespace
/// (one process's `/proc/<pid>/net/tcp` and `tcp6` per namespace): the established
/// connections whose local port nobody listens on and whose peer is not loopback. The
/// kernel notes clients as they connect; these connected before it was watching.
/// IPv4-mapped addresses come as IPv4.
pub fn connected_clients() -> BTreeSet<IpAddr> {
    let mut seen = BTreeSet::new();
    let mut clients = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return clients;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match namespace_of(pid) {
            Some(namespace) if seen.insert(namespace) => {}
            _ => continue,
        }
        let tables: Vec<String> = ["tcp", "tcp6"]
            .iter()
            .filter_map(|name| std::fs::read_to_string(format!("/proc/{pid}/net/{name}")).ok())
            .collect();
        clients.extend(clients_of(&tables));
    }
    clients
}

/// The clients of a namespace's TCP tables (connected_clients).
fn clients_of(tables: &[String]) -> Vec<IpAddr> {
    let sockets: Vec<TcpSocket> = tables.iter().flat_map(|table| tcp_sockets(table)).collect();
    let listening: BTreeSet<u16> = sockets
        .iter()
        .filter(|socket| socket.state == TCP_LISTEN)
        .map(|socket| socket.local_port)
        .collect();
    sockets
        .iter()
        .filter(|socket| {
            socket.state == TCP_ESTABLISHED
                && !listening.contains(&socket.local_port)
                && !socket.local.is_loopback()
                && !socket.remote.is_loopback()
        })
        .map(|socket| socket.local)
        .collect()
}

/// The local servers by (address, port): for each server (its port and any identity
/// `S`) the addresses of its namespace.
pub fn endpoints<S: Clone>(
    servers: impl IntoIterator<Item = (u32, u16, S)>,
    addresses: &mut NamespaceAddresses,
    now: Instant,
) -> HashMap<(String, u16), S> {
    let mut out = HashMap::new();
    for (pid, port, server) in servers {
        for address in addresses.of_process(pid, now) {
            out.entry((address.to_string(), port))
                .or_insert_with(|| server.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_are_read_from_the_fib_trie_and_if_inet6() {
        let fib_trie = "Main:
  +-- 0.0.0.0/0 3 0 4
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 10.251.0.0/24 2 0 2
           |-- 10.251.0.0
              /24 link UNICAST
           |-- 10.251.0.2
              /32 host LOCAL
           |-- 10.251.0.3
              /32 host LOCAL
        |-- 10.251.0.255
           /32 link BROADCAST
Local:
           |-- 10.251.0.2
              /32 host LOCAL
";
        let want: Vec<Ipv4Addr> = vec!["10.251.0.2".parse().unwrap(), "10.251.0.3".parse().unwrap()];
        assert_eq!(local_ipv4(fib_trie), want);
        let if_inet6 = "fe8000000000000000fc00fffe000001 04 40 20 80     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
00000000000000000000000000000001 01 80 10 80       lo
junk
";
        assert_eq!(local_ipv6(if_inet6), vec!["fd00::2".parse::<Ipv6Addr>().unwrap()]);
    }

    #[test]
    fn connected_clients_are_established_sockets_on_ports_nobody_listens_on() {
        // As a little-endian host prints them.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100FB0A:1F90 0200FB0A:A000 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0200FB0A:A001 0100FB0A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:A002 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1
   4: 0300FB0A:A003 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 5 1
   5: junk
"
        .to_string();
        let tcp6 = "  sl  local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode
   0: 0000000000000000FFFF00000400FB0A:A004 0000000000000000FFFF00000100FB0A:0050 01 0:0 0:0 0 0 0 6 1
   1: 000000FD000000000000000002000000:A005 000000FD000000000000000001000000:0050 01 0:0 0:0 0 0 0 7 1
"
        .to_string();
        let want: Vec<IpAddr> = ["10.251.0.2", "10.251.0.4", "fd00::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut got = clients_of(&[tcp, tcp6]);
        got.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn namespaces_past_the_cap_push_out_the_least_recently_read() {
        let mut addresses = NamespaceAddresses::new(2);
        let now = Instant::now();
        let earlier = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        addresses.by_namespace.insert(1, (earlier, Vec::new()));
        addresses.by_namespace.insert(2, (now, Vec::new()));
        let mine = addresses.of_process(std::process::id(), now).to_vec();
        assert!(mine.iter().all(|a| !a.is_loopback()));
        assert_eq!(addresses.by_namespace.len(), 2);
        assert!(!addresses.by_namespace.contains_key(&1));
        assert!(addresses.of_process(u32::MAX, now).is_empty());
    }
}
