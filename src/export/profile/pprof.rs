//! A profile as pprof: the `perftools.profiles.Profile` message of pprof's
//! `profile.proto`, gzip-compressed, as `go tool pprof` and Pyroscope read it. The
//! messages are declared here with that file's field numbers.

use std::collections::HashMap;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;

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

/// The string table: index 0 is the empty string, as the format requires.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut strings = Strings::default();
        strings.of("");
        strings
    }

    fn of(&mut self, text: &str) -> i64 {
        if let Some(&i) = self.index.get(text) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(text.to_string());
        self.index.insert(text.to_string(), i);
        i
    }
}

/// The profile as a pprof message. Two values per sample: the sample count and the CPU
/// time it stands for (count x period). Each frame is one location of one function,
/// within a mapping per module; samples carry `pid` and `process` labels.
pub fn message(profile: &Profile) -> PprofProfile {
    let mut strings = Strings::new();
    let period_ns = 1_000_000_000 / profile.frequency_hz.max(1) as i64;
    let samples_type = ValueType {
        r#type: strings.of("samples"),
        unit: strings.of("count"),
    };
    let cpu_type = ValueType {
        r#type: strings.of("cpu"),
        unit: strings.of("nanoseconds"),
    };
    let (pid_key, process_key) = (strings.of("pid"), strings.of("process"));
    let mut mappings: HashMap<String, u64> = HashMap::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut out = PprofProfile {
        sample_type: vec![samples_type, cpu_type.clone()],
        time_nanos: profile
            .start
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i64),
        duration_nanos: profile.duration.as_nanos() as i64,
        period_type: Some(cpu_type),
        period: period_ns,
        ..PprofProfile::default()
    };
    for stack in &profile.stacks {
        let mut location_id = Vec::with_capacity(stack.frames.len());
        for frame in &stack.frames {
            let next_mapping = mappings.len() as u64 + 1;
            let mapping_id = *mappings.entry(frame.module.clone()).or_insert_with(|| {
                out.mapping.push(Mapping {
                    id: next_mapping,
                    filename: strings.of(&frame.module),
                    has_functions: true,
                });
                next_mapping
            });
            let next_function = functions.len() as u64 + 1;
            let function_id = *functions
                .entry((frame.module.clone(), frame.function.clone()))
                .or_insert_with(|| {
                    let name = strings.of(&frame.function);
                    out.function.push(Function {
                        id: next_function,
                        name,
                        system_name: name,
                        filename: strings.of(&frame.module),
                    });
                    // One location per function: frames are merged by name.
                    out.location.push(Location {
                        id: next_function,
                        mapping_id,
                        line: vec![Line {
                            function_id: next_function,
                        }],
                    });
                    next_function
                });
            location_id.push(function_id);
        }
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
                    str: strings.of(&stack.process),
                    ..Label::default()
                },
            ],
        });
    }
    out.string_table = strings.table;
    out
}

/// The gzip-compressed encoding, as pprof files and ingest endpoints take it.
pub fn encode(profile: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(&message(profile).encode_to_vec())?;
    gzip.finish()
}
