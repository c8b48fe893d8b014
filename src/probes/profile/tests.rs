use super::config::ProfileConfig;
use crate::probes::ProbeSettings;

#[test]
fn the_defaults_sample_at_19_hz_whenever_a_profile_receiver_is_on() {
    let config = ProfileConfig::default();
    assert!(!config.enabled());
    assert!(ProfileConfig {
        receivers: true,
        ..ProfileConfig::default()
    }
    .enabled());
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

#[test]
fn the_switch_is_true_false_or_auto_and_follows_the_receivers() {
    use crate::config::Config;
    let on = "exporters:\n  profiles:\n    pyroscope:\n      enabled: true\n";
    assert!(Config::from_yaml("c.yaml", on).expect("valid").probes.profile.enabled());
    let off = format!("probes:\n  profile:\n    enabled: false\n{on}");
    assert!(!Config::from_yaml("c.yaml", &off).expect("valid").probes.profile.enabled());
    let forced = "probes:\n  profile:\n    enabled: true\n";
    assert!(Config::from_yaml("c.yaml", forced).expect("valid").probes.profile.enabled());
    let bad = "probes:\n  profile:\n    enabled: sometimes\n";
    let err = Config::from_yaml("c.yaml", bad).expect_err("not a switch").to_string();
    assert!(err.contains("c.yaml:3") && err.contains("probes.profile.enabled"), "{err}");
    assert!(err.contains("true, false or auto"), "{err}");
}
