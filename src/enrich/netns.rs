//! Network namespaces as `/proc` shows them: which one a process is in, and the TCP
//! sockets of a namespace (`/proc/<pid>/net/tcp` and `tcp6`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The number in a link target such as `socket:[123]` or `net:[4026531840]`.
pub fn bracketed_number(target: &str, prefix: &str) -> Option<u64> {
    target.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
}

/// The inode of the network namespace of process `pid`.
pub fn namespace_of(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    bracketed_number(link.to_str()?, "net:[")
}

/// TCP states as the tables print them (`st`).
pub const TCP_ESTABLISHED: u8 = 0x01;
pub const TCP_LISTEN: u8 = 0x0A;

/// One row of a `/proc/net/tcp{,6}` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub state: u8,
    pub inode: u64,
}

/// The sockets of a `/proc/net/tcp` or `tcp6` table; rows that do not parse are left out.
pub fn tcp_sockets(table: &str) -> Vec<TcpSocket> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, local_port) = socket_of(fields.get(1)?)?;
            let (remote, _) = socket_of(fields.get(2)?)?;
            Some(TcpSocket {
                local,
                local_port,
                remote,
                state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
                inode: fields.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// An `ADDRESS:PORT` of a TCP table: the address as hex words in host order, the port
/// in hex. IPv4-mapped IPv6 addresses come as IPv4.
fn socket_of(field: &str) -> Option<(IpAddr, u16)> {
    let (hex, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        let digits = hex.get(8 * i..8 * i + 8)?;
        u32::from_str_radix(digits, 16).ok().map(u32::to_ne_bytes)
    };
    let address = match hex.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((address, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_tables_parse_in_host_order_with_mapped_addresses_as_ipv4() {
        // As a little-endian host prints them.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1
   1: 0000000000000000FFFF00000400FB0A:A004 000000FD000000000000000001000000:0050 01 0:0 0:0 0 0 0 12 1
   2: junk
";
        let sockets = tcp_sockets(table);
        assert_eq!(sockets.len(), 2);
        assert_eq!(
            (sockets[0].local_port, sockets[0].state, sockets[0].inode),
            (8080, TCP_LISTEN, 11)
        );
        assert_eq!(sockets[1].local, "10.251.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(sockets[1].remote, "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!((sockets[1].state, sockets[1].inode), (TCP_ESTABLISHED, 12));
        assert_eq!(
            bracketed_number("net:[4026531840]", "net:["),
            Some(4026531840)
        );
    }
}
