//! `periscope floor`: empty programs on the syscall hooks, to measure the floor cost any
//! syscall-wide eBPF tracer pays on this kernel (see BENCHMARKS.md).

use std::mem::MaybeUninit;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::Link;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/floor.skel.rs"));
}

/// Keeps the empty programs attached while alive.
pub struct Floor {
    _links: Vec<Link>,
}

impl Floor {
    pub fn attach() -> Result<Floor, libbpf_rs::Error> {
        let storage = Box::leak(Box::new(MaybeUninit::uninit()));
        let open = skel::FloorSkelBuilder::default().open(storage)?;
        let mut skel = open.load()?;
        skel.attach()?;
        let links = vec![
            skel.links.psc_floor_enter.take(),
            skel.links.psc_floor_exit.take(),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(Floor { _links: links })
    }
}
