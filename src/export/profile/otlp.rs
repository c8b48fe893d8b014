//! Profiles as OTLP: `ExportProfilesServiceRequest` of OpenTelemetry's profiles signal
//! (`opentelemetry/proto/profiles/v1development`, still in development: experimental
//! here), declared with that file's field numbers. Every table of the shared dictionary
//! starts with its zero value, as the format requires; each process is a resource with
//! its labels as resource attributes.

use std::collections::{BTreeMap, HashMap};

use super::Interned;
use crate::export::otlp::proto::{InstrumentationScope, KeyValue, Resource};
use crate::model::agent_labels;
use crate::model::profile::{Profile, StackSamples};

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExportProfilesServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_profiles: Vec<ResourceProfiles>,
    #[prost(message, optional, tag = "2")]
    pub dictionary: Option<ProfilesDictionary>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProfilesDictionary {
    #[prost(message, repeated, tag = "1")]
    pub mapping_table: Vec<Mapping>,
    #[prost(message, repeated, tag = "2")]
    pub location_table: Vec<Location>,
    #[prost(message, repeated, tag = "3")]
    pub function_table: Vec<Function>,
    #[prost(message, repeated, tag = "4")]
    pub link_table: Vec<Link>,
    #[prost(string, repeated, tag = "5")]
    pub string_table: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    pub attribute_table: Vec<KeyValueAndUnit>,
    #[prost(message, repeated, tag = "7")]
    pub stack_table: Vec<Stack>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceProfiles {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_profiles: Vec<ScopeProfiles>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScopeProfiles {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub profiles: Vec<OtlpProfile>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OtlpProfile {
    #[prost(message, optional, tag = "1")]
    pub sample_type: Option<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    #[prost(fixed64, tag = "3")]
    pub time_unix_nano: u64,
    #[prost(uint64, tag = "4")]
    pub duration_nano: u64,
    #[prost(message, optional, tag = "5")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "6")]
    pub period: i64,
    #[prost(bytes = "vec", tag = "7")]
    pub profile_id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int32, tag = "1")]
    pub type_strindex: i32,
    #[prost(int32, tag = "2")]
    pub unit_strindex: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(int32, tag = "1")]
    pub stack_index: i32,
    #[prost(int64, repeated, tag = "4")]
    pub values: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    #[prost(int32, tag = "4")]
    pub filename_strindex: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Stack {
    #[prost(int32, repeated, tag = "1")]
    pub location_indices: Vec<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(int32, tag = "1")]
    pub mapping_index: i32,
    #[prost(message, repeated, tag = "3")]
    pub lines: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(int32, tag = "1")]
    pub function_index: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(int32, tag = "1")]
    pub name_strindex: i32,
    #[prost(int32, tag = "2")]
    pub system_name_strindex: i32,
    #[prost(int32, tag = "3")]
    pub filename_strindex: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Link {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValueAndUnit {}

/// Each distinct stack's index in the stack table; the empty stack is the zero one.
#[derive(Default)]
struct Stacks {
    table: Vec<Stack>,
    index: HashMap<Vec<i32>, i32>,
}

impl Stacks {
    fn index(&mut self, locations: Vec<i32>) -> i32 {
        if locations.is_empty() {
            return 0;
        }
        if let Some(&i) = self.index.get(&locations) {
            return i;
        }
        let i = self.table.len() as i32 + 1;
        self.table.push(Stack {
            location_indices: locations.clone(),
        });
        self.index.insert(locations, i);
        i
    }
}

/// The dictionary of what was interned: every table with its zero value first, then
/// module n as mapping n, function n as function n and location n.
fn dictionary(interned: Interned, stacks: Stacks) -> ProfilesDictionary {
    let mut dictionary = ProfilesDictionary {
        mapping_table: vec![Mapping::default()],
        location_table: vec![Location::default()],
        function_table: vec![Function::default()],
        link_table: vec![Link::default()],
        string_table: Vec::new(),
        attribute_table: vec![KeyValueAndUnit::default()],
        stack_table: vec![Stack::default()],
    };
    dictionary
        .mapping_table
        .extend(interned.modules.iter().map(|&name| Mapping {
            filename_strindex: name as i32,
        }));
    for (n, &(name, module)) in (1..).zip(&interned.functions) {
        dictionary.function_table.push(Function {
            name_strindex: name as i32,
            system_name_strindex: name as i32,
            filename_strindex: interned.modules[module - 1] as i32,
        });
        dictionary.location_table.push(Location {
            mapping_index: module as i32,
            lines: vec![Line { function_index: n }],
        });
    }
    dictionary.stack_table.extend(stacks.table);
    dictionary.string_table = interned.strings;
    dictionary
}

/// The request for `profile`: a resource per process (its labels as resource
/// attributes), each with one profile of CPU samples.
pub fn request(profile: &Profile) -> ExportProfilesServiceRequest {
    let mut interned = Interned::new();
    let mut stacks_table = Stacks::default();
    let mut string = |text: &str| interned.string(text) as i32;
    let sample_type = ValueType {
        type_strindex: string("samples"),
        unit_strindex: string("count"),
    };
    let period_type = ValueType {
        type_strindex: string("cpu"),
        unit_strindex: string("nanoseconds"),
    };
    let period = profile.period_ns();
    let start = profile.since_epoch().as_nanos() as u64;
    let mut by_process: BTreeMap<u32, Vec<&StackSamples>> = BTreeMap::new();
    for stack in &profile.stacks {
        by_process.entry(stack.pid).or_default().push(stack);
    }
    let mut resource_profiles = Vec::new();
    for (pid, stacks) in by_process {
        let mut attributes: Vec<KeyValue> = stacks[0]
            .labels
            .iter()
            .filter(|(key, _)| *key != agent_labels::PROCESS_PID)
            .map(|(key, value)| KeyValue::string(agent_labels::resource_attribute(key), value))
            .collect();
        attributes.push(KeyValue::int("process.pid", i64::from(pid)));
        if !stacks[0]
            .labels
            .iter()
            .any(|(key, _)| *key == agent_labels::PROCESS_EXECUTABLE_NAME)
        {
            attributes.push(KeyValue::string(
                "process.executable.name",
                &stacks[0].process,
            ));
        }
        let samples = stacks
            .iter()
            .map(|stack| {
                let locations = stack
                    .frames
                    .iter()
                    .map(|frame| interned.frame(frame) as i32)
                    .collect();
                Sample {
                    stack_index: stacks_table.index(locations),
                    values: vec![stack.count as i64],
                }
            })
            .collect();
        let mut profile_id = [0u8; 16];
        profile_id[..8].copy_from_slice(&start.to_be_bytes());
        profile_id[8..12].copy_from_slice(&pid.to_be_bytes());
        resource_profiles.push(ResourceProfiles {
            resource: Some(Resource { attributes }),
            scope_profiles: vec![ScopeProfiles {
                scope: Some(InstrumentationScope {
                    name: "periscope".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                profiles: vec![OtlpProfile {
                    sample_type: Some(sample_type.clone()),
                    samples,
                    time_unix_nano: start,
                    duration_nano: profile.duration.as_nanos() as u64,
                    period_type: Some(period_type.clone()),
                    period,
                    profile_id: profile_id.to_vec(),
                }],
            }],
        });
    }
    ExportProfilesServiceRequest {
        resource_profiles,
        dictionary: Some(dictionary(interned, stacks_table)),
    }
}
