//! The JSON-lines exporter's settings, under `exporters.jsonl` (documented in the
//! default configuration).

use std::num::NonZeroU32;

use serde::Deserialize;

use crate::settings::{nonzero, Invalid, Range, DAY};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonLinesConfig {
    /// Write spans and metric snapshots as JSON lines (docs/jsonl-schema.md).
    pub enabled: bool,
    /// A file, or `-` for standard output.
    pub path: String,
    /// A file is rotated when it reaches this size: `path` becomes `path.1`, and so on.
    pub max_file_bytes: NonZeroU32,
    /// Rotated files kept, at most.
    pub max_files: u32,
    /// A snapshot of every metric this often; 0: spans only.
    pub metrics_interval_secs: u64,
    /// Permissions of the files, in octal; never world-writable.
    pub file_mode: String,
}

impl JsonLinesConfig {
    /// `file_mode` as permission bits; None when it is not octal or allows others to
    /// write.
    pub fn mode(&self) -> Option<u32> {
        u32::from_str_radix(self.file_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|mode| *mode <= 0o777 && mode & 0o002 == 0)
    }

    /// Every number with the range it must fall in, keyed below `exporters.jsonl`.
    pub fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new(
                "max_file_bytes",
                u64::from(self.max_file_bytes.get()),
                4096,
                u64::from(u32::MAX),
            ),
            Range::new("max_files", u64::from(self.max_files), 0, 1000),
            Range::new("metrics_interval_secs", self.metrics_interval_secs, 0, DAY),
        ]
    }

    /// What serde cannot check: the files' permissions.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.mode().is_none() {
            return Err((
                "file_mode",
                format!(
                    "`{}`: must be octal permissions such as \"0640\", not writable by others",
                    self.file_mode
                ),
            ));
        }
        Ok(())
    }
}

impl Default for JsonLinesConfig {
    fn default() -> Self {
        JsonLinesConfig {
            enabled: false,
            path: "-".into(),
            max_file_bytes: nonzero(100 << 20),
            max_files: 5,
            metrics_interval_secs: 60,
            file_mode: "0640".into(),
        }
    }
}
