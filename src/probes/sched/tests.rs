use super::*;
use crate::model::native::KERNEL_SLOTS;

#[test]
fn the_kernels_histogram_decodes_with_its_sum() {
    let mut hist = types::psc_hist {
        sum: 7_000,
        ..Default::default()
    };
    hist.buckets[3] = 2;
    hist.buckets[KERNEL_SLOTS - 1] = 1;
    let bytes = util::plain_bytes(&hist).to_vec();
    let decoded = decode_hist(&bytes).expect("a whole histogram decodes");
    assert_eq!(decoded.count(), 3);
    assert_eq!(decoded.sum, 7_000);
    assert_eq!(decoded.slot(KERNEL_SLOTS - 1), 1);
    assert!(decode_hist(&bytes[..bytes.len() - 1]).is_none());
}

#[test]
fn a_series_key_is_a_name_and_a_cgroup() {
    let mut key = types::psc_sched_key {
        cgroup: 42,
        ..Default::default()
    };
    for (slot, byte) in key.comm.iter_mut().zip(b"nginx\0") {
        *slot = *byte as _;
    }
    let decoded: types::psc_sched_key = decode(util::plain_bytes(&key)).expect("decodes");
    assert_eq!(c_string(&decoded.comm), "nginx");
    assert_eq!(decoded.cgroup, 42);
}
