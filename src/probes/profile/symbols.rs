//! Names for sampled addresses: blazesym for ELF and DWARF symbols of processes (through
//! `/proc/PID/map_files`, so binaries in containers resolve too) and of the kernel
//! (`/proc/kallsyms`). An address no symbol covers is named by its module and offset.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use blazesym::symbolize::source::{Kernel, Process, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer};
use blazesym::{MaybeDefault, Pid};

use crate::model::profile::Frame;

/// A mapping of a process's address space: where a file's bytes sit.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
}

/// The mappings of `/proc/PID/maps` that hold files; empty once the process is gone.
fn read_mappings(pid: u32) -> Vec<Mapping> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    text.lines().filter_map(parse_mapping).collect()
}

fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let _perms = fields.next()?;
    let offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let path: Vec<&str> = fields.collect();
    let path = path.join(" ");
    if path.is_empty() {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
    })
}

fn base_name(path: &str) -> &str {
    Path::new(path)
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or(path)
}

/// Names addresses, one process (or the kernel) at a time.
pub struct Symbols {
    symbolizer: Symbolizer,
    /// Addresses that no symbol covered, per module: for the count of failures.
    pub unsymbolized: u64,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbols {
    pub fn new() -> Symbols {
        Symbols {
            symbolizer: Symbolizer::builder()
                .enable_code_info(false)
                .enable_inlined_fns(false)
                .build(),
            unsymbolized: 0,
        }
    }

    /// Frames for the return addresses of one process's stacks, innermost first: the
    /// first is where the sample was taken, each other one is an address a call returns
    /// to, named by the call before it.
    pub fn user(&mut self, pid: u32, addresses: &[u64]) -> HashMap<u64, Frame> {
        let mut process = Process::new(Pid::from(pid));
        process.perf_map = false;
        let source = Source::Process(process);
        let mappings = read_mappings(pid);
        let names = self.names(&source, addresses);
        addresses
            .iter()
            .zip(names)
            .map(|(&address, named)| {
                let frame = match named {
                    Some(frame) if frame.module.is_empty() => Frame {
                        module: unsymbolized_user(&mappings, address).module,
                        ..frame
                    },
                    Some(frame) => frame,
                    None => {
                        self.unsymbolized += 1;
                        unsymbolized_user(&mappings, address)
                    }
                };
                (address, frame)
            })
            .collect()
    }

    pub fn kernel(&mut self, addresses: &[u64]) -> HashMap<u64, Frame> {
        let source = Source::Kernel(Kernel {
            vmlinux: MaybeDefault::None,
            ..Kernel::default()
        });
        let names = self.names(&source, addresses);
        addresses
            .iter()
            .zip(names)
            .map(|(&address, named)| {
                let frame = named.map(|frame| Frame {
                    module: "[kernel]".into(),
                    ..frame
                });
                let frame = frame.unwrap_or_else(|| {
                    self.unsymbolized += 1;
                    Frame {
                        function: format!("[kernel]+{address:#x}"),
                        module: "[kernel]".into(),
                        symbolized: false,
                    }
                });
                (address, frame)
            })
            .collect()
    }

    /// Each address's symbol, or None.
    fn names(&self, source: &Source<'_>, addresses: &[u64]) -> Vec<Option<Frame>> {
        let Ok(found) = self.symbolizer.symbolize(source, Input::AbsAddr(addresses)) else {
            return vec![None; addresses.len()];
        };
        found
            .into_iter()
            .map(|symbolized| match symbolized {
                Symbolized::Sym(sym) => Some(Frame {
                    function: sym.name.into_owned(),
                    module: sym
                        .module
                        .map(|m| base_name(&m.to_string_lossy()).to_string())
                        .unwrap_or_default(),
                    symbolized: true,
                }),
                Symbolized::Unknown(_) => None,
            })
            .collect()
    }
}

/// `module+0xoffset` (the offset in the file), or the bare address outside any file.
fn unsymbolized_user(mappings: &[Mapping], address: u64) -> Frame {
    match mappings
        .iter()
        .find(|m| m.start <= address && address < m.end)
    {
        Some(m) => {
            let module = base_name(&m.path).to_string();
            Frame {
                function: format!("{module}+{:#x}", address - m.start + m.offset),
                module,
                symbolized: false,
            }
        }
        None => Frame {
            function: format!("[unknown]+{address:#x}"),
            module: "[unknown]".into(),
            symbolized: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_outside_symbols_is_named_by_its_module_and_file_offset() {
        let line = "7f0000001000-7f0000003000 r-xp 00002000 08:01 1234   /usr/lib/libweird name.so";
        let mapping = parse_mapping(line).expect("a file mapping");
        assert_eq!(mapping.path, "/usr/lib/libweird name.so");
        let frame = unsymbolized_user(&[mapping], 0x7f0000001010);
        assert_eq!(frame.function, "libweird name.so+0x2010");
        assert!(!frame.symbolized);
        assert_eq!(unsymbolized_user(&[], 0x10).function, "[unknown]+0x10");
        assert!(parse_mapping("7f00-7f01 rw-p 00000000 00:00 0").is_none());
    }
}
