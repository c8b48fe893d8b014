//! Profiles written for people and tools: pprof and flame graphs, and pushed to
//! Pyroscope and OTLP receivers.

pub mod config;
pub mod flamegraph;
pub mod otlp;
pub mod pprof;
pub mod push;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use crate::model::profile::Frame;

/// What pprof and OTLP profiles both intern: strings (the empty one first, as both
/// formats require), and each frame's module and function, numbered from 1 in the order
/// first seen (pprof ids start at 1; OTLP's tables keep 0 for their zero values). A
/// function has one location of the same number: frames are merged by name.
struct Interned {
    strings: Vec<String>,
    string_index: HashMap<String, usize>,
    /// Each module's name, as a string index; module n is `modules[n - 1]`.
    modules: Vec<usize>,
    module_index: HashMap<String, usize>,
    /// Each function's name and module number; function n is `functions[n - 1]`.
    functions: Vec<(usize, usize)>,
    function_index: HashMap<(String, String), usize>,
}

impl Interned {
    fn new() -> Interned {
        let mut interned = Interned {
            strings: Vec::new(),
            string_index: HashMap::new(),
            modules: Vec::new(),
            module_index: HashMap::new(),
            functions: Vec::new(),
            function_index: HashMap::new(),
        };
        interned.string("");
        interned
    }

    fn string(&mut self, text: &str) -> usize {
        if let Some(&i) = self.string_index.get(text) {
            return i;
        }
        let i = self.strings.len();
        self.strings.push(text.to_string());
        self.string_index.insert(text.to_string(), i);
        i
    }

    /// The frame's function number (its location's too), its module numbered on the way.
    fn frame(&mut self, frame: &Frame) -> usize {
        let key = (frame.module.clone(), frame.function.clone());
        if let Some(&n) = self.function_index.get(&key) {
            return n;
        }
        let module = match self.module_index.get(&frame.module) {
            Some(&n) => n,
            None => {
                let name = self.string(&frame.module);
                self.modules.push(name);
                self.module_index
                    .insert(frame.module.clone(), self.modules.len());
                self.modules.len()
            }
        };
        let name = self.string(&frame.function);
        self.functions.push((name, module));
        self.function_index.insert(key, self.functions.len());
        self.functions.len()
    }
}
