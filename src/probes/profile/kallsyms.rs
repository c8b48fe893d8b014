//! Kernel frame names from `/proc/kallsyms`, in a compact table of its text symbols.
//!
//! The kernel's table has over 100,000 symbols. A symbolizer's parse of it kept about
//! 20 MiB in the agent; reading the file on every round instead cost about 100 ms a
//! round (the kernel formats it line by line). This table is one sorted array and one
//! string of names, about 5 MiB, read in one streaming pass, and read again only where it
//! may have gone stale: modules were loaded or unloaded, or it has aged (programs such as
//! BPF ones come and go without touching the modules' list).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

/// How far past the last symbol of the table an address is still taken to be in it; one
/// beyond is in memory the table does not describe.
const PAST_LAST_SYMBOL: u64 = 1 << 20;

/// A table older than this is read again before it names a new address.
const STALE_AFTER: Duration = Duration::from_secs(300);

/// One line of the table: address, type, name (and `[module]` after, for a module's).
fn parse_line(line: &[u8]) -> Option<(u64, u8, &[u8])> {
    let mut fields = line
        .split(|&b| b == b' ' || b == b'\t' || b == b'\n')
        .filter(|f| !f.is_empty());
    let address = std::str::from_utf8(fields.next()?).ok()?;
    let address = u64::from_str_radix(address, 16).ok()?;
    let kind = *fields.next()?.first()?;
    let name = fields.next()?;
    Some((address, kind, name))
}

/// Symbols that are code: functions, and weak ones that may be.
fn is_text(kind: u8) -> bool {
    matches!(kind, b't' | b'T' | b'w' | b'W')
}

/// The kernel's text symbols, by address.
#[derive(Debug)]
pub struct KernelTable {
    /// (start address, name offset, name length), sorted by address.
    symbols: Vec<(u64, u32, u32)>,
    names: String,
    read_at: Instant,
    modules: String,
}

impl KernelTable {
    /// Reads the table in one pass. Where it shows every address as zero (the reader
    /// lacks CAP_SYSLOG) the table is empty and names nothing.
    pub fn read(path: &Path, modules: &Path) -> io::Result<KernelTable> {
        let mut reader = BufReader::with_capacity(64 * 1024, File::open(path)?);
        let mut line = Vec::with_capacity(256);
        let mut symbols = Vec::new();
        let mut names = String::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            let Some((address, kind, name)) = parse_line(&line) else {
                continue;
            };
            if address == 0 || !is_text(kind) || names.len() + name.len() > u32::MAX as usize {
                continue;
            }
            let offset = names.len() as u32;
            names.push_str(&String::from_utf8_lossy(name));
            symbols.push((address, offset, (names.len() as u32) - offset));
        }
        // Of two symbols at one address, the first line names it: the sort is stable.
        symbols.sort_by_key(|&(address, _, _)| address);
        symbols.dedup_by_key(|&mut (address, _, _)| address);
        symbols.shrink_to_fit();
        names.shrink_to_fit();
        Ok(KernelTable {
            symbols,
            names,
            read_at: Instant::now(),
            modules: fs::read_to_string(modules).unwrap_or_default(),
        })
    }

    /// Whether the kernel may have symbols this table lacks.
    pub fn stale(&self, modules: &Path) -> bool {
        self.read_at.elapsed() > STALE_AFTER
            || fs::read_to_string(modules).unwrap_or_default() != self.modules
    }

    /// The text symbol that covers `address`: the nearest at or below it.
    pub fn name(&self, address: u64) -> Option<&str> {
        let covering = self.symbols.partition_point(|&(start, _, _)| start <= address);
        let &(start, offset, len) = self.symbols.get(covering.checked_sub(1)?)?;
        if covering == self.symbols.len() && address - start > PAST_LAST_SYMBOL {
            return None;
        }
        self.names.get(offset as usize..(offset + len) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_of(text: &str) -> KernelTable {
        let dir = std::env::temp_dir().join(format!("periscope-kallsyms-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("kallsyms-{}", text.len()));
        fs::write(&path, text).expect("write table");
        let table = KernelTable::read(&path, &dir.join("no-modules")).expect("read table");
        fs::remove_file(&path).ok();
        table
    }

    #[test]
    fn each_address_is_named_by_the_text_symbol_at_or_below_it() {
        let table = table_of(
            "ffffffff81000000 T _stext\n\
             ffffffff81000100 d some_data\n\
             ffffffff81000200 t do_work\n\
             ffffffff81000200 t do_work_alias\n\
             ffffffff81000400 W weak_fn\n\
             ffffffffc0001000 t mod_fn\t[some_mod]\n\
             ffffffff81000300 T out_of_order\n",
        );
        assert_eq!(table.name(0xffffffff81000000), Some("_stext"));
        // Data symbols never name code.
        assert_eq!(table.name(0xffffffff81000150), Some("_stext"));
        assert_eq!(table.name(0xffffffff81000201), Some("do_work"));
        assert_eq!(table.name(0xffffffff81000350), Some("out_of_order"));
        assert_eq!(table.name(0xffffffff81000400), Some("weak_fn"));
        assert_eq!(table.name(0xffffffffc0001010), Some("mod_fn"));
        assert_eq!(table.name(0xffffffff80000000), None);
        assert_eq!(table.name(0xffffffffc0001000 + PAST_LAST_SYMBOL + 1), None);
    }

    #[test]
    fn a_table_of_zero_addresses_names_nothing() {
        let table = table_of("0000000000000000 T _stext\n0000000000000000 t f\n");
        assert_eq!(table.name(0x10), None);
    }

    #[test]
    fn the_kernels_own_table_names_its_entry_code() {
        let table = KernelTable::read(Path::new("/proc/kallsyms"), Path::new("/proc/modules"))
            .expect("read /proc/kallsyms");
        let Some(&(start, _, _)) = table.symbols.first() else {
            return; // no CAP_SYSLOG: addresses hidden
        };
        assert!(table.name(start).is_some());
        assert!(!table.stale(Path::new("/proc/modules")));
    }
}
