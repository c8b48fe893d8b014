//! `periscope floor`: empty programs on the syscall hooks (or the socket hooks, or
//! socket-hook programs that only copy bytes), to measure the floor cost any
//! syscall-wide (or socket-level) eBPF tracer pays on this kernel (see BENCHMARKS.md).

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::Link;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/floor.skel.rs"));
}

/// Which hooks get empty programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloorHooks {
    /// tp_btf/sys_enter and tp_btf/sys_exit: every syscall.
    Syscalls,
    /// tp_btf/sock_recv_length, sock_send_length and inet_sock_set_state: the http
    /// probe's hooks.
    Socket,
    /// The socket hooks, with programs that find each TCP read's or write's buffer and
    /// copy its first 256 bytes: what seeing plaintext HTTP costs before any tracking,
    /// parsing or event.
    SocketCopy,
    /// tp_btf/sched_wakeup, sched_wakeup_new and sched_switch: the sched probe's hooks.
    Sched,
    /// What the default probes with http on hook between timing windows: tp_btf/sys_exit
    /// (syscalls), and the http probe's socket hooks with skb_copy_datagram_iovec.
    DefaultHttp,
}

impl FloorHooks {
    pub fn describe(self) -> &'static str {
        match self {
            FloorHooks::Syscalls => "tp_btf/sys_enter and tp_btf/sys_exit",
            FloorHooks::Socket => {
                "tp_btf/sock_recv_length, tp_btf/sock_send_length and tp_btf/inet_sock_set_state"
            }
            FloorHooks::SocketCopy => {
                "tp_btf/sock_recv_length and tp_btf/sock_send_length, copying each TCP read's and write's first 256 bytes"
            }
            FloorHooks::Sched => {
                "tp_btf/sched_wakeup, tp_btf/sched_wakeup_new and tp_btf/sched_switch"
            }
            FloorHooks::DefaultHttp => {
                "tp_btf/sys_exit, tp_btf/sock_recv_length, tp_btf/sock_send_length, tp_btf/inet_sock_set_state and tp_btf/skb_copy_datagram_iovec"
            }
        }
    }
}

/// Keeps the empty programs attached while alive.
pub struct Floor {
    _links: Vec<Link>,
}

impl Floor {
    pub fn attach(hooks: FloorHooks) -> Result<Floor, libbpf_rs::Error> {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let open = skel::FloorSkelBuilder::default().open(storage)?;
        let skel = open.load()?;
        let progs = &skel.progs;
        let chosen = match hooks {
            FloorHooks::Syscalls => vec![&progs.psc_floor_enter, &progs.psc_floor_exit],
            FloorHooks::Socket => vec![
                &progs.psc_floor_recv,
                &progs.psc_floor_send,
                &progs.psc_floor_state,
            ],
            FloorHooks::SocketCopy => vec![
                &progs.psc_floor_recv_copy,
                &progs.psc_floor_send_copy,
                &progs.psc_floor_state,
            ],
            FloorHooks::Sched => vec![
                &progs.psc_floor_wakeup,
                &progs.psc_floor_wakeup_new,
                &progs.psc_floor_switch,
            ],
            FloorHooks::DefaultHttp => vec![
                &progs.psc_floor_exit,
                &progs.psc_floor_recv,
                &progs.psc_floor_send,
                &progs.psc_floor_state,
                &progs.psc_floor_skb_copy,
            ],
        };
        let links = chosen
            .into_iter()
            .map(|prog| prog.attach())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Floor { _links: links })
    }
}
