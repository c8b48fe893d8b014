//! A profile as pprof: the `perftools.profiles.Profile` message of pprof's
//! `profile.proto`, gzip-compressed, as `go tool pprof` and Pyroscope read it. The
//! messages are declared here with that file's field numbers.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

use super::Interned;
use crate::model::profile::Profile;

#[derive(Clone, PartialEq, Message)]
pub struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// The profile as a pprof message. Two values per sample: the sample count and the CPU
/// time it stands for (count x period). Each frame is one location of one function,
/// within a mapping per module; samples carry `pid` and `process` labels.
pub fn message(profile: &Profile) -> PprofProfile {
    let mut interned = Interned::new();
    let mut string = |text: &str| interned.string(text) as i64;
    let period_ns = profile.period_ns();
    let samples_type = ValueType {
        r#type: string("samples"),
        unit: string("count"),
    };
    let cpu_type = ValueType {
        r#type: string("cpu"),
        unit: string("nanoseconds"),
    };
    let (pid_key, process_key) = (string("pid"), string("process"));
    let mut out = PprofProfile {
        sample_type: vec![samples_type, cpu_type.clone()],
        time_nanos: profile.since_epoch().as_nanos() as i64,
        duration_nanos: profile.duration.as_nanos() as i64,
        period_type: Some(cpu_type),
        period: period_ns,
        ..PprofProfile::default()
    };
    for stack in &profile.stacks {
        let location_id = stack
            .frames
            .iter()
            .map(|frame| interned.frame(frame) as u64)
            .collect();
        let count = stack.count as i64;
        out.sample.push(Sample {
            location_id,
            value: vec![count, count.saturating_mul(period_ns)],
            label: vec![
                Label {
                    key: pid_key,
                    num: i64::from(stack.pid),
                    ..Label::default()
                },
                Label {
                    key: process_key,
                    str: interned.string(&stack.process) as i64,
                    ..Label::default()
                },
            ],
        });
    }
    out.mapping = (1..)
        .zip(&interned.modules)
        .map(|(id, &name)| Mapping {
            id,
            filename: name as i64,
            has_functions: true,
        })
        .collect();
    for (id, &(name, module)) in (1..).zip(&interned.functions) {
        out.function.push(Function {
            id,
            name: name as i64,
            system_name: name as i64,
            filename: interned.modules[module - 1] as i64,
        });
        out.location.push(Location {
            id,
            mapping_id: module as u64,
            line: vec![Line { function_id: id }],
        });
    }
    out.string_table = interned.strings;
    out
}

/// The gzip-compressed encoding, as pprof files and ingest endpoints take it.
pub fn encode(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(&message(profile).encode_to_vec())?;
    gzip.finish()
}
