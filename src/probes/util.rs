//! Helpers every probe's loader uses to read its maps.

use std::mem::MaybeUninit;

use libbpf_rs::skel::SkelBuilder;
use libbpf_rs::{MapCore, MapFlags, OpenMapMut};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the kernel has no BTF at {0}; Periscope needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(&'static str),
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    /// The kernel refused to load a program: usually its verifier, whose log says why.
    #[error("{what}: the kernel refused it ({source}); `--log-level libbpf=debug` prints the verifier's log")]
    Load {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    /// The kernel refused a program the probe cannot run without.
    #[error("the kernel refused its required program {program} at {stage} ({errno}): this kernel lacks {kernel_feature}")]
    Refused {
        program: &'static str,
        kernel_feature: &'static str,
        stage: &'static str,
        errno: String,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl ProbeError {
    pub fn bpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> ProbeError {
        let what = what.into();
        move |source| ProbeError::Bpf { what, source }
    }
}

/// Opens a probe's BPF object. A skeleton borrows its object's storage for its whole
/// life, which is the probe's: the storage is leaked, once per load.
pub fn open_object<B: SkelBuilder<'static>>(
    builder: B,
    probe: &str,
) -> Result<B::Output, ProbeError> {
    let storage = Box::leak(Box::new(MaybeUninit::uninit()));
    builder
        .open(storage)
        .map_err(ProbeError::bpf(format!("opening the {probe} BPF object")))
}

/// Sizes a map before load: `what` names it in the error.
pub fn set_entries(map: &mut OpenMapMut<'_>, entries: u32, what: &str) -> Result<(), ProbeError> {
    map.set_max_entries(entries)
        .map_err(ProbeError::bpf(format!(
            "sizing {what} ({entries} entries)"
        )))
}

/// Hands a probe's programs the tenant of each cgroup: its `cgroup_tenants` map, and
/// the version in its bss that tells the programs to look again (bpf/tenants.h).
macro_rules! replace_cgroup_tenants {
    ($tenants:expr, $maps:expr, $cgroups:expr) => {{
        let maps = &mut $maps;
        let version = maps
            .bss_data
            .as_deref_mut()
            .map(|bss| &mut bss.cgroup_tenants_version);
        $tenants.replace(&maps.cgroup_tenants, version, $cgroups)
    }};
}
pub(crate) use replace_cgroup_tenants;

/// The sum of a per-CPU value's copies, each decoded into the generated type `T`.
pub fn sum_percpu<T: plain::Plain + Default, S: Default>(
    values: &[Vec<u8>],
    add: impl Fn(&mut S, &T),
) -> S {
    let mut total = S::default();
    for bytes in values {
        if let Some(value) = decode::<T>(bytes) {
            add(&mut total, &value);
        }
    }
    total
}

/// Marks types the skeleton generated from the BPF object as plain bytes, so that map
/// keys and values decode into them.
macro_rules! plain_types {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: plain C structs of integers, generated from the BPF object's BTF.
            unsafe impl plain::Plain for $ty {}
        )*
    };
}
pub(crate) use plain_types;

/// The length of an array field of a generated type, known at compile time: how the
/// Rust side learns a BPF object's limits (`PSC_MAX_SYSCALLS` sizes `latency_index`)
/// without copying them.
pub const fn field_len<S, T, const N: usize>(_field: fn(&S) -> &[T; N]) -> usize {
    N
}

/// Entries of a keyed map against its cap.
#[derive(Debug, Clone)]
pub struct MapFill {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

impl MapFill {
    /// The fill of a BPF map, counted key by key.
    pub fn of<M: MapCore>(name: &'static str, map: &M) -> MapFill {
        MapFill {
            map: name,
            entries: map.keys().count() as u64,
            capacity: u64::from(map.max_entries()),
        }
    }
}

/// Sums a per-CPU u64 value.
pub fn sum_percpu_u64(values: &[Vec<u8>]) -> u64 {
    values
        .iter()
        .filter_map(|bytes| bytes.get(..8))
        .map(|bytes| u64::from_ne_bytes(bytes.try_into().unwrap_or([0; 8])))
        .fold(0u64, u64::wrapping_add)
}

/// Every (key, per-CPU values) pair of a per-CPU map. Keys deleted while we iterate are
/// skipped.
pub fn read_percpu<M: MapCore>(map: &M) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
    map.keys()
        .filter_map(|key| {
            let values = map.lookup_percpu(&key, MapFlags::ANY).ok().flatten()?;
            Some((key, values))
        })
        .collect()
}

/// Reads and deletes one key of a per-CPU hash in one step (the kernel's
/// lookup-and-delete), so nothing the programs add between a read and a delete is lost.
/// None when the key is gone or the kernel cannot do it.
pub fn take_percpu<M: MapCore>(map: &M, key: &[u8]) -> Option<Vec<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    if key.len() != map.key_size() as usize {
        return None;
    }
    let cpus = libbpf_rs::num_possible_cpus().ok()?;
    let value_size = map.value_size() as usize;
    // The kernel lays per-CPU values out 8-byte aligned, one after the other.
    let stride = value_size.div_ceil(8) * 8;
    let mut values = vec![0u8; stride * cpus];
    // SAFETY: the key holds key_size bytes and the buffer one aligned value per possible
    // CPU, which is what the kernel writes for a per-CPU map.
    let rc = unsafe {
        libbpf_rs::libbpf_sys::bpf_map_lookup_and_delete_elem(
            map.as_fd().as_raw_fd(),
            key.as_ptr().cast(),
            values.as_mut_ptr().cast(),
        )
    };
    (rc == 0).then(|| {
        values
            .chunks(stride)
            .map(|chunk| chunk[..value_size].to_vec())
            .collect()
    })
}

/// A value of a generated C type from the bytes of a map's key or value.
pub fn decode<T: plain::Plain + Default>(bytes: &[u8]) -> Option<T> {
    let mut value = T::default();
    plain::copy_from_bytes(&mut value, bytes).ok()?;
    Some(value)
}

/// Every (key, value) pair of a shared map.
pub fn read_shared<M: MapCore>(map: &M) -> Vec<(Vec<u8>, Vec<u8>)> {
    map.keys()
        .filter_map(|key| {
            let value = map.lookup(&key, MapFlags::ANY).ok().flatten()?;
            Some((key, value))
        })
        .collect()
}

/// Sum over CPUs of slot `idx` of a per-CPU u64 array.
pub fn percpu_array_u64<M: MapCore>(map: &M, idx: u32) -> u64 {
    map.lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .map(|values| sum_percpu_u64(&values))
        .unwrap_or(0)
}

/// A C string field (comm) as text: up to the first NUL, invalid UTF-8 replaced.
pub fn c_string(bytes: &[i8]) -> String {
    let bytes: Vec<u8> = bytes
        .iter()
        .map(|b| *b as u8)
        .take_while(|b| *b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether an error from libbpf says the kernel lacks BTF or the program type.
pub fn check_btf() -> Result<(), ProbeError> {
    if std::path::Path::new(crate::kernel::BTF_PATH).exists() {
        Ok(())
    } else {
        Err(ProbeError::NoBtf(crate::kernel::BTF_PATH))
    }
}

/// The text form of an address a BPF program copied from a socket: IPv4 in the first 4
/// bytes when `family` is AF_INET, IPv6 when AF_INET6; "" when unknown.
pub fn socket_address(family: u8, addr: &[u8; 16]) -> String {
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    match family {
        AF_INET => std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string(),
        AF_INET6 => std::net::Ipv6Addr::from(*addr).to_string(),
        _ => String::new(),
    }
}

/// The bytes of a kernel-shared value, as map keys and values are passed.
pub fn plain_bytes<T: plain::Plain>(value: &T) -> &[u8] {
    // SAFETY: Plain types are plain integers without padding-dependent invariants.
    unsafe { plain::as_bytes(value) }
}

/// The record (`struct psc_process` of `bpf/process.h`) a probe's BPF program kept of a
/// process in `$map`, under the key bytes `$key`: its name and cgroup. Each skeleton
/// generates its own copy of the type, named by `$types`.
macro_rules! recorded_process {
    ($types:ident, $map:expr, $key:expr) => {{
        libbpf_rs::MapCore::lookup(&$map, $key, libbpf_rs::MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|bytes| {
                let mut record = $types::psc_process::default();
                plain::copy_from_bytes(&mut record, &bytes).ok()?;
                let text = $crate::probes::util::c_string;
                Some((
                    text(&record.comm),
                    $crate::enrich::workload::RecordedCgroup {
                        id: record.cgroup.id,
                        leaf: text(&record.cgroup.leaf),
                        parent: text(&record.cgroup.parent),
                    },
                ))
            })
    }};
}
pub(crate) use recorded_process;

/// The user-space side of `cgroup_tenants` in `bpf/tenants.h`: each tenant's cgroups
/// and their slot (or DROPPED_SLOT).
#[derive(Debug, Default)]
pub struct CgroupTenants {
    current: Vec<(u64, u32)>,
    /// Cgroups that did not fit in the map: their processes count as no tenant's in the
    /// kernel (a dropped tenant's are then counted, and removed on export).
    pub refused: u64,
}

impl CgroupTenants {
    /// Makes `map` hold `cgroups` (sorted by id), as far as it fits: dropped tenants'
    /// first, as a refused one costs most (its processes are traced). When it changed,
    /// bumps the program's `cgroup_tenants_version` (`version`), so that cached
    /// verdicts are asked again.
    pub fn replace<M: MapCore>(
        &mut self,
        map: &M,
        version: Option<&mut u32>,
        cgroups: &[(u64, u32)],
    ) {
        if self.current == cgroups {
            return;
        }
        for (id, _) in &self.current {
            if cgroups.binary_search_by_key(id, |(id, _)| *id).is_err() {
                let _ = map.delete(&id.to_ne_bytes());
            }
        }
        let mut now = Vec::with_capacity(cgroups.len());
        let dropped = |slot: &u32| *slot == crate::enrich::tenant::DROPPED_SLOT;
        let in_order = cgroups
            .iter()
            .filter(|(_, slot)| dropped(slot))
            .chain(cgroups.iter().filter(|(_, slot)| !dropped(slot)));
        for (id, slot) in in_order {
            match map.update(&id.to_ne_bytes(), &slot.to_ne_bytes(), MapFlags::ANY) {
                Ok(()) => now.push((*id, *slot)),
                Err(_) => self.refused += 1,
            }
        }
        now.sort_unstable();
        self.current = now;
        if let Some(version) = version {
            *version = version.wrapping_add(1);
        }
    }

    pub fn fill<M: MapCore>(&self, map: &M) -> MapFill {
        MapFill {
            map: "cgroup_tenants",
            entries: self.current.len() as u64,
            capacity: u64::from(map.max_entries()),
        }
    }
}

/// PSC_TENANT_MAPS of bpf/tenants.h.
pub use crate::model::layout::TENANT_MAPS;

/// The user-space side of the tenants' shares of a program's keyed maps
/// (`tenant_added`, `tenant_base` in bpf/tenants.h): before each read of the maps it
/// notes what the program added; after, it tells the program how many entries each slot
/// holds, as counted in the read.
#[derive(Debug, Default)]
pub struct TenantShares {
    slots: u32,
    added_before_read: Vec<i64>,
    /// `tenant_folded` as of the last `read_folded`, by slot and map.
    folded: Vec<[u64; TENANT_MAPS as usize]>,
}

impl TenantShares {
    /// `slots` from TenantSlots::count: shares are off with 1.
    pub fn new(slots: u32) -> TenantShares {
        TenantShares {
            slots,
            added_before_read: Vec::new(),
            folded: Vec::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.slots > 1
    }

    /// Call just before reading the keyed maps.
    pub fn before_read<M: MapCore>(&mut self, added: &M) {
        if !self.enabled() {
            return;
        }
        self.added_before_read = (0..self.slots * TENANT_MAPS)
            .map(|idx| read_i64(added, idx))
            .collect();
    }

    /// `entries[slot][map]`: what the read found, less what was deleted since. An entry
    /// added between `before_read` and the read is counted twice until the next read,
    /// which errs on the side of the other tenants.
    pub fn after_read<M: MapCore>(&self, base: &M, entries: &[[i64; TENANT_MAPS as usize]]) {
        if !self.enabled() {
            return;
        }
        for slot in 0..self.slots {
            for map in 0..TENANT_MAPS {
                let idx = slot * TENANT_MAPS + map;
                let counted = entries
                    .get(slot as usize)
                    .map_or(0, |maps| maps[map as usize]);
                let added = self
                    .added_before_read
                    .get(idx as usize)
                    .copied()
                    .unwrap_or(0);
                let value = counted.wrapping_sub(added);
                let _ = base.update(&idx.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY);
            }
        }
    }

    /// Reads the program's `tenant_folded`: once per collection.
    pub fn read_folded<M: MapCore>(&mut self, folded: &M) {
        if !self.enabled() {
            return;
        }
        self.folded = (0..self.slots)
            .map(|slot| {
                let mut maps = [0; TENANT_MAPS as usize];
                for (map, count) in maps.iter_mut().enumerate() {
                    *count = percpu_array_u64(folded, slot * TENANT_MAPS + map as u32);
                }
                maps
            })
            .collect();
    }

    /// Updates each slot's full share of `map` refused, as of the last `read_folded`:
    /// the slots that refused any.
    pub fn folded(&self, map: u32) -> Vec<(u32, u64)> {
        (0..self.slots)
            .zip(&self.folded)
            .map(|(slot, maps)| (slot, maps.get(map as usize).copied().unwrap_or(0)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    /// A counted entry table with a row per slot.
    pub fn entries(&self) -> Vec<[i64; TENANT_MAPS as usize]> {
        vec![[0; TENANT_MAPS as usize]; self.slots as usize]
    }
}

fn read_i64<M: MapCore>(map: &M, idx: u32) -> i64 {
    map.lookup(&idx.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|bytes| {
            bytes
                .get(..8)
                .map(|b| i64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
        })
        .unwrap_or(0)
}
