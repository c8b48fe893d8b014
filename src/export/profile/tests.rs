use std::time::{Duration, UNIX_EPOCH};

use prost::Message;

use super::{flamegraph, pprof};
use crate::model::profile::{Frame, Profile, StackSamples};

fn frame(name: &str, module: &str) -> Frame {
    Frame {
        function: name.into(),
        module: module.into(),
        symbolized: true,
    }
}

fn two_stacks() -> Profile {
    Profile {
        start: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        duration: Duration::from_secs(5),
        frequency_hz: 100,
        stacks: vec![
            StackSamples {
                pid: 42,
                process: "burn;er\nx".into(),
                labels: Vec::new(),
                frames: vec![frame("burn_a", "burn"), frame("main", "burn")],
                count: 7,
            },
            StackSamples {
                pid: 42,
                process: "burn;er\nx".into(),
                labels: Vec::new(),
                frames: vec![frame("burn_b", "burn"), frame("main", "burn")],
                count: 3,
            },
        ],
        ..Profile::default()
    }
}

#[test]
fn folded_lines_run_outermost_first_and_keep_their_separators_unambiguous() {
    let folded = two_stacks().folded();
    assert_eq!(folded, "burn:er x;main;burn_a 7\nburn:er x;main;burn_b 3\n");
}

#[test]
fn pprof_decodes_to_the_same_samples_and_cpu_time() {
    let profile = two_stacks();
    let bytes = pprof::encode(&profile).expect("gzip");
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut raw)
        .expect("gunzip");
    let decoded = pprof::PprofProfile::decode(&raw[..]).expect("decode");
    let s = |i: i64| decoded.string_table[i as usize].as_str();
    assert_eq!(s(0), "");
    assert_eq!(decoded.period, 10_000_000);
    assert_eq!(decoded.duration_nanos, 5_000_000_000);
    let names = |sample: &pprof::Sample| -> Vec<&str> {
        sample
            .location_id
            .iter()
            .map(|id| {
                let location = &decoded.location[*id as usize - 1];
                let function = &decoded.function[location.line[0].function_id as usize - 1];
                s(function.name)
            })
            .collect()
    };
    assert_eq!(names(&decoded.sample[0]), ["burn_a", "main"]);
    assert_eq!(decoded.sample[0].value, [7, 70_000_000]);
    assert_eq!(names(&decoded.sample[1]), ["burn_b", "main"]);
    assert_eq!(decoded.sample[1].value, [3, 30_000_000]);
    assert_eq!(s(decoded.sample[0].label[1].str), "burn;er\nx");
}

#[test]
fn the_flame_graph_escapes_names_and_sizes_boxes_by_samples() {
    let mut profile = two_stacks();
    profile.stacks[0].frames[0].function = "a<b>&\"c'\u{1}".into();
    let svg = flamegraph::svg(&profile);
    assert!(
        svg.contains("a&lt;b&gt;&amp;&quot;c&apos;  (7 samples, 70.00%)"),
        "{svg}"
    );
    assert!(!svg.contains('\u{1}'));
    assert!(svg.contains("<title>main (10 samples, 100.00%)</title>"));
    assert!(svg.contains("10 samples at 100 Hz over 5.0 s"));
}

#[test]
fn names_cut_to_fit_a_narrow_box_keep_their_entities_whole() {
    let mut profile = two_stacks();
    // A wide stack and a narrow one whose name is all markup: its label is cut.
    profile.stacks[0].count = 2_000;
    profile.stacks[1].frames[0].function = "<&<&<&<&<&<&<&<&<&<&<&<&".into();
    profile.stacks[1].count = 40;
    let svg = flamegraph::svg(&profile);
    for (at, _) in svg.match_indices('&') {
        let rest = &svg[at..];
        assert!(
            ["&lt;", "&gt;", "&amp;", "&quot;", "&apos;"]
                .iter()
                .any(|entity| rest.starts_with(entity)),
            "a broken entity at {}",
            &rest[..rest.len().min(12)]
        );
    }
    assert!(svg.contains("&lt;&amp;"), "{svg}");
}
