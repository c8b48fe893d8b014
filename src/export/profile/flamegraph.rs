//! A profile drawn as a flame graph: one SVG, each frame a box as wide as its share of
//! the samples, callers below callees, each process a tower of its own. Written here
//! rather than taken from a flame-graph library, to keep the binary's licences simple.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::model::profile::Profile;

const WIDTH: f64 = 1200.0;
const FRAME_HEIGHT: f64 = 16.0;
const PAD: f64 = 10.0;
const HEADER: f64 = 40.0;
/// Boxes narrower than this are left out (their samples still count in their callers).
const MIN_WIDTH: f64 = 0.1;
/// Font size 11 puts about this many pixels per character.
const CHAR_WIDTH: f64 = 6.6;

#[derive(Default)]
struct Node {
    samples: u64,
    kernel: bool,
    children: BTreeMap<String, Node>,
}

impl Node {
    fn depth(&self) -> usize {
        1 + self.children.values().map(Node::depth).max().unwrap_or(0)
    }
}

/// The SVG of `profile`, titled with its sample count, frequency and duration.
pub fn svg(profile: &Profile) -> String {
    let mut root = Node::default();
    for stack in &profile.stacks {
        root.samples += stack.count;
        let mut node = root.children.entry(stack.process.clone()).or_default();
        node.samples += stack.count;
        for frame in stack.frames.iter().rev() {
            node = node.children.entry(frame.function.clone()).or_default();
            node.samples += stack.count;
            node.kernel = frame.module == "[kernel]";
        }
    }
    let depth = root.depth();
    let height = HEADER + depth as f64 * FRAME_HEIGHT + 2.0 * PAD;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}">
<style>text {{ font-family: monospace; font-size: 11px; fill: #000; pointer-events: none; }} rect:hover {{ stroke: #000; stroke-width: 0.5; }}</style>
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#f8f8f8"/>
<text x="{x}" y="24" style="font-size: 17px" text-anchor="middle">CPU flame graph</text>
<text x="{PAD}" y="{sub}">{samples} samples at {hz} Hz over {secs:.1} s; width is the share of samples, callers below callees</text>
"##,
        x = WIDTH / 2.0,
        sub = HEADER - 4.0,
        samples = root.samples,
        hz = profile.frequency_hz,
        secs = profile.duration.as_secs_f64(),
    );
    if root.samples > 0 {
        let scale = (WIDTH - 2.0 * PAD) / root.samples as f64;
        draw(&mut out, "all", &root, PAD, 0, scale, height, root.samples);
    }
    out.push_str("</svg>\n");
    out
}

#[allow(clippy::too_many_arguments)]
fn draw(
    out: &mut String,
    name: &str,
    node: &Node,
    x: f64,
    level: usize,
    scale: f64,
    height: f64,
    total: u64,
) {
    let width = node.samples as f64 * scale;
    if width < MIN_WIDTH {
        return;
    }
    let y = height - PAD - (level + 1) as f64 * FRAME_HEIGHT;
    let raw = name;
    let name = escape(raw);
    let share = 100.0 * node.samples as f64 / total as f64;
    let _ = write!(
        out,
        "<g><title>{name} ({} samples, {share:.2}%)</title><rect x=\"{x:.2}\" y=\"{y:.1}\" width=\"{width:.2}\" height=\"{h:.1}\" rx=\"2\" fill=\"{fill}\"/>",
        node.samples,
        h = FRAME_HEIGHT - 1.0,
        fill = color(&name, node.kernel, level),
    );
    let fits = ((width - 6.0) / CHAR_WIDTH) as usize;
    if fits >= 3 {
        // Cut before escaping: a cut inside `&lt;` would leave a broken entity.
        let label = if raw.chars().count() <= fits {
            name.clone()
        } else {
            escape(&raw.chars().take(fits - 2).collect::<String>()) + ".."
        };
        let _ = write!(
            out,
            "<text x=\"{:.2}\" y=\"{:.1}\">{}</text>",
            x + 3.0,
            y + FRAME_HEIGHT - 4.5,
            label
        );
    }
    out.push_str("</g>\n");
    let mut child_x = x;
    for (child_name, child) in &node.children {
        draw(
            out,
            child_name,
            child,
            child_x,
            level + 1,
            scale,
            height,
            total,
        );
        child_x += child.samples as f64 * scale;
    }
}

/// Warm colours for code in processes, cooler orange for the kernel, grey for the root
/// and the processes; the shade follows the name, so a function keeps its colour.
fn color(name: &str, kernel: bool, level: usize) -> String {
    if level < 2 {
        return "rgb(200,200,200)".into();
    }
    let hash = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    let vary = (hash % 1000) as f64 / 1000.0;
    if kernel {
        format!("rgb({},{},{})", 230, 140 + (vary * 50.0) as u8, 60)
    } else {
        format!(
            "rgb({},{},{})",
            205 + (vary * 50.0) as u8,
            (vary * 200.0) as u8,
            40
        )
    }
}

/// Text safe in SVG: the five markup characters escaped, control characters dropped
/// (XML 1.0 allows none but tab and line breaks).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}
