use super::config::ProfileConfig;
use crate::probes::ProbeSettings;

#[test]
fn the_defaults_sample_at_19_hz_and_stay_off() {
    let config = ProfileConfig::default();
    assert!(!config.enabled());
    assert_eq!(config.frequency_hz, 19);
    assert!(config.ranges().iter().all(|r| r.check().is_ok()));
}

#[test]
fn a_container_is_named_by_hex_digits() {
    for bad in ["", "abc", "docker", "../../etc", "abcd efgh"] {
        let err = super::container_cgroup(bad).expect_err(bad);
        assert!(err.contains("not a container id"), "{err}");
    }
}
